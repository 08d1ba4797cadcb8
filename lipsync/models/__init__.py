"""The three Wav2Lip networks, layer-for-layer compatible with the official checkpoints.

- `SyncNet`: the lip-sync expert (a frozen critic during generator training).
- `Wav2Lip`: the generator.
- `VisualQualityDiscriminator`: the GAN critic of the HQ recipe.

All take BGR pixels scaled to [0, 1]; see each module's docstring for the tensor layouts.
"""

from lipsync.models.blocks import lower_half
from lipsync.models.discriminator import VisualQualityDiscriminator
from lipsync.models.syncnet import SYNC_FRAMES, SyncNet, sync_probability, syncnet_face_input
from lipsync.models.wav2lip import Wav2Lip, generator_input, mask_lower_half

__all__ = [
    "SYNC_FRAMES",
    "SyncNet",
    "VisualQualityDiscriminator",
    "Wav2Lip",
    "generator_input",
    "lower_half",
    "mask_lower_half",
    "sync_probability",
    "syncnet_face_input",
]
