"""The three Wav2Lip networks, layer-for-layer compatible with the official checkpoints.

- `SyncNet`: the lip-sync expert (a frozen critic during generator training).
- `Wav2Lip`: the generator.
- `VisualQualityDiscriminator`: the GAN critic of the HQ recipe.

All take BGR pixels scaled to [0, 1]; see each module's docstring for the tensor layouts.
Each module also declares its network's `ModelKind` (`lipsync.models.kind`): what the
checkpoint loader needs to recognise and rebuild it.
"""

from lipsync.models.blocks import lower_half
from lipsync.models.discriminator import DISCRIMINATOR_KIND, VisualQualityDiscriminator
from lipsync.models.kind import ModelKind
from lipsync.models.syncnet import SYNC_FRAMES, SYNCNET_KIND, SyncNet, sync_probability, syncnet_face_input
from lipsync.models.wav2lip import WAV2LIP_KIND, Wav2Lip, generator_input, mask_lower_half

# Every network the checkpoints know, in the order their kinds are listed to users.
MODEL_KINDS = (SYNCNET_KIND, WAV2LIP_KIND, DISCRIMINATOR_KIND)

__all__ = [
    "DISCRIMINATOR_KIND",
    "MODEL_KINDS",
    "SYNCNET_KIND",
    "SYNC_FRAMES",
    "WAV2LIP_KIND",
    "ModelKind",
    "SyncNet",
    "VisualQualityDiscriminator",
    "Wav2Lip",
    "generator_input",
    "lower_half",
    "mask_lower_half",
    "sync_probability",
    "syncnet_face_input",
]
