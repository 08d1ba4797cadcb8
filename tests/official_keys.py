"""The official Wav2Lip state_dict layouts, written out from the reference's layer tables
(../shared/reference/wav2lip.md §2-§4) independently of lipsync.models, so the tests compare
the model code against the tables rather than against itself.

Each table row is one block: (cin, cout, kernel). "T" marks a transposed convolution
(weights stored (cin, cout, k, k)); BN blocks have 7 entries, no-norm blocks 2.
"""

import torch

# §2 SyncNet_color
EXPERT_FACE = [(15, 32, 7), (32, 64, 5), (64, 64, 3), (64, 64, 3),
               (64, 128, 3), (128, 128, 3), (128, 128, 3), (128, 128, 3),
               (128, 256, 3), (256, 256, 3), (256, 256, 3),
               (256, 512, 3), (512, 512, 3), (512, 512, 3),
               (512, 512, 3), (512, 512, 3), (512, 512, 1)]
EXPERT_AUDIO = [(1, 32, 3), (32, 32, 3), (32, 32, 3),
                (32, 64, 3), (64, 64, 3), (64, 64, 3),
                (64, 128, 3), (128, 128, 3), (128, 128, 3),
                (128, 256, 3), (256, 256, 3), (256, 256, 3),
                (256, 512, 3), (512, 512, 1)]

# §3 Wav2Lip generator
GEN_FACE_STAGES = [
    [(6, 16, 7)],
    [(16, 32, 3), (32, 32, 3), (32, 32, 3)],
    [(32, 64, 3), (64, 64, 3), (64, 64, 3), (64, 64, 3)],
    [(64, 128, 3), (128, 128, 3), (128, 128, 3)],
    [(128, 256, 3), (256, 256, 3), (256, 256, 3)],
    [(256, 512, 3), (512, 512, 3)],
    [(512, 512, 3), (512, 512, 1)],
]
GEN_AUDIO = EXPERT_AUDIO[:11] + EXPERT_AUDIO[12:]  # one 256→256 residual instead of two
GEN_DECODER_STAGES = [
    [(512, 512, 1)],
    [("T", 1024, 512, 3), (512, 512, 3)],
    [("T", 1024, 512, 3), (512, 512, 3), (512, 512, 3)],
    [("T", 768, 384, 3), (384, 384, 3), (384, 384, 3)],
    [("T", 512, 256, 3), (256, 256, 3), (256, 256, 3)],
    [("T", 320, 128, 3), (128, 128, 3), (128, 128, 3)],
    [("T", 160, 64, 3), (64, 64, 3), (64, 64, 3)],
]

# §4 Wav2Lip_disc_qual (no BatchNorm)
DISC_STAGES = [
    [(3, 32, 7)],
    [(32, 64, 5), (64, 64, 5)],
    [(64, 128, 5), (128, 128, 5)],
    [(128, 256, 5), (256, 256, 5)],
    [(256, 512, 3), (512, 512, 3)],
    [(512, 512, 3), (512, 512, 3)],
    [(512, 512, 3), (512, 512, 1)],
]

OFFICIAL_COUNTS = {  # (tensors, trainable parameters) from the reference
    "expert": (217, 16_435_072),
    "wav2lip": (352, 36_298_035),
    "disc": (28, 14_113_793),
}


def _bn_block(prefix, row):
    transposed = row[0] == "T"
    cin, cout, k = row[1:] if transposed else row
    weight = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    return {
        f"{prefix}.conv_block.0.weight": weight,
        f"{prefix}.conv_block.0.bias": (cout,),
        f"{prefix}.conv_block.1.weight": (cout,),
        f"{prefix}.conv_block.1.bias": (cout,),
        f"{prefix}.conv_block.1.running_mean": (cout,),
        f"{prefix}.conv_block.1.running_var": (cout,),
        f"{prefix}.conv_block.1.num_batches_tracked": (),
    }


def official_shapes(kind: str) -> dict:
    """key → shape of the official checkpoint of `kind`, from the tables above."""
    shapes = {}
    if kind == "expert":
        for i, row in enumerate(EXPERT_FACE):
            shapes.update(_bn_block(f"face_encoder.{i}", row))
        for i, row in enumerate(EXPERT_AUDIO):
            shapes.update(_bn_block(f"audio_encoder.{i}", row))
    elif kind == "wav2lip":
        for b, stage in enumerate(GEN_FACE_STAGES):
            for j, row in enumerate(stage):
                shapes.update(_bn_block(f"face_encoder_blocks.{b}.{j}", row))
        for i, row in enumerate(GEN_AUDIO):
            shapes.update(_bn_block(f"audio_encoder.{i}", row))
        for b, stage in enumerate(GEN_DECODER_STAGES):
            for j, row in enumerate(stage):
                shapes.update(_bn_block(f"face_decoder_blocks.{b}.{j}", row))
        shapes.update(_bn_block("output_block.0", (80, 32, 3)))
        shapes["output_block.1.weight"] = (3, 32, 1, 1)
        shapes["output_block.1.bias"] = (3,)
    elif kind == "disc":
        for b, stage in enumerate(DISC_STAGES):
            for j, (cin, cout, k) in enumerate(stage):
                shapes[f"face_encoder_blocks.{b}.{j}.conv_block.0.weight"] = (cout, cin, k, k)
                shapes[f"face_encoder_blocks.{b}.{j}.conv_block.0.bias"] = (cout,)
        shapes["binary_pred.0.weight"] = (1, 512, 1, 1)
        shapes["binary_pred.0.bias"] = (1,)
    else:
        raise ValueError(kind)
    return shapes


def trainable_count(shapes: dict) -> int:
    """Parameters (not BN running statistics) in a key → shape table."""
    total = 0
    for key, shape in shapes.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def fake_official_state_dict(kind: str, seed: int = 0, with_batch_counts: bool = True) -> dict:
    """Random tensors under the official key names and shapes (what a real file holds, modulo values)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes(kind).items():
        if key.endswith("num_batches_tracked"):
            if with_batch_counts:
                sd[key] = torch.tensor(700_000, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.05
    return sd
