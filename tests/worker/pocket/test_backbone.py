"""Continuous batching computes exactly what transformers' generate() computes per sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from voxline.worker.engines.pocket.backbone import Backbone, Sentence
from voxline.worker.engines.pocket.loading import load
from voxline.worker.engines.pocket.voices import Voices

TEXTS = [
    "Hello world.",
    "This is a test of the speech model, with numbers like 42.",
    "Yes!",
    "Good morning, how can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
]


def _reference(loaded, voices: Voices, text: str, seed: int) -> torch.Tensor:
    """generate() on the whole prompt (voice + text), one sentence alone."""
    processor = loaded.processor
    rendered = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": "v"}, {"type": "text", "text": text}],
            }
        ],
        tokenize=False,
    )
    inputs = processor(
        text=rendered, audio_prompt_latents=[voices.shipped["alba"]], return_tensors="pt"
    )
    torch.manual_seed(seed)
    out = loaded.model.generate(**inputs, return_dict_in_generate=True)
    return out.audio_latents[0, : int(out.audio_latents_mask[0].sum())]


def _sentence(voices: Voices, text: str, seed: int) -> Sentence:
    prompt = voices.prompt(text, "alba", None, None)
    return Sentence(
        text_ids=prompt.text_ids,
        prefix=prompt.prefix,
        frames_after_eos=prompt.frames_after_eos,
        max_frames=prompt.max_frames,
        seed=seed,
    )


@pytest.mark.parametrize("padding", [None, [0, 1, 3, 3]], ids=["unpadded", "padded"])
def test_batch_with_joins_equals_generate_alone(
    pocket_eos_dir: Path, padding: list[int] | None
) -> None:
    loaded = load(str(pocket_eos_dir), torch.device("cpu"), torch.float32)
    backbone = Backbone(loaded.model, slots=3)
    if padding is not None:  # steps of 1 or 2 sentences run as 3 rows
        backbone._padding = padding
    voices = Voices(backbone, loaded.processor, loaded.voices_dir)
    references = [_reference(loaded, voices, text, 100 + i) for i, text in enumerate(TEXTS)]
    lengths = {len(r) for r in references}
    assert len(lengths) > 1, "the end-of-speech rule should end sentences at different frames"

    sentences = [_sentence(voices, text, 100 + i) for i, text in enumerate(TEXTS)]
    frames: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(TEXTS))}
    active: list[int] = []
    waiting = list(range(len(TEXTS)))
    step = 0
    with torch.inference_mode():
        while waiting or active:
            # Up to two join every other step, into whatever slots are free: sentences join
            # mid-way through others and reuse the slots of finished ones.
            new = waiting[: min(2, backbone.free_slots)] if step % 2 == 0 else []
            del waiting[: len(new)]
            running = list(active)
            if new:
                for i, latent in zip(new, backbone.admit([sentences[i] for i in new]), strict=True):
                    frames[i].append(latent)
            if running:
                for i, latent in zip(
                    running, backbone.step([sentences[i] for i in running]), strict=True
                ):
                    frames[i].append(latent)
            active = running + new
            for i in [i for i in active if sentences[i].finished]:
                backbone.release(sentences[i])
                active.remove(i)
            step += 1
    for i, reference in enumerate(references):
        mine = torch.stack(frames[i])
        assert mine.shape == reference.shape, (i, mine.shape, reference.shape)
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-4)
    assert backbone.free_slots == 3


def test_slots_are_reused_without_leaking_state(pocket_dir: Path) -> None:
    loaded = load(str(pocket_dir), torch.device("cpu"), torch.float32)
    backbone = Backbone(loaded.model, slots=1)
    voices = Voices(backbone, loaded.processor, loaded.voices_dir)

    def run(text: str) -> torch.Tensor:
        sentence = _sentence(voices, text, 7)
        out = [backbone.admit([sentence])[0]]
        while not sentence.finished:
            out.append(backbone.step([sentence])[0])
        backbone.release(sentence)
        return torch.stack(out)

    first = run(TEXTS[1])
    run(TEXTS[3])  # a longer occupant of the same slot in between
    torch.testing.assert_close(run(TEXTS[1]), first, atol=0, rtol=0)


def test_tune_pads_only_to_cheaper_row_counts(pocket_dir: Path) -> None:
    loaded = load(str(pocket_dir), torch.device("cpu"), torch.float32)
    backbone = Backbone(loaded.model, slots=8)
    padding = backbone.tune(8)
    assert padding[0] == 0 and len(padding) == 9
    assert all(rows <= padding[rows] <= 8 for rows in range(1, 9))
    assert backbone.padded(20) == 20
