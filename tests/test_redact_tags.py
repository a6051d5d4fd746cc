"""Keyed tags: the same image gives the same tag in two runs; another site secret another tag."""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from redact_helpers import copy_corpus, corpus_policy, corpus_runs, map_path_for, png_tag
from tfwb_agent.redact import placeholders
from tfwb_agent.redact.run import redact_run

ORIGINAL = "media/images/samples/ct_1_f75490119bfe8cc57687.png"  # logged at step 1 by every run


def _placeholder_for(src: Path, dst: Path, original: str) -> bytes:
    """The placeholder that replaced ``original`` (found through the shared name stem)."""
    stem = original.rsplit("_", 1)[0]
    orig_tag_hits = []
    for p in (dst / "files").glob(stem + "_*.png"):
        orig_tag_hits.append(p.read_bytes())
    assert orig_tag_hits, f"no placeholder for {original}"
    data = (src / "files" / original).read_bytes()
    want = placeholders.tag(SECRETS[0] if dst.parent.name == "a" else SECRETS[1], data)
    hits = [b for b in orig_tag_hits if png_tag(b) == want]
    assert len(hits) == 1, "exactly one placeholder carries the original's tag"
    return hits[0]


SECRETS = (b"site-one-secret-0123456789abcdef", b"site-two-secret-0123456789abcdef")


def test_same_image_same_tag_across_runs_and_secret_changes_it(tmp_path: Path) -> None:
    root = copy_corpus(tmp_path / "runs")
    run_a, run_b = corpus_runs(root)[0], corpus_runs(root)[2]   # a 0.15.12 and a 0.31.0 run
    assert (run_a / "files" / ORIGINAL).read_bytes() == (run_b / "files" / ORIGINAL).read_bytes()
    out = {}
    for name, secret in (("a", SECRETS[0]), ("b", SECRETS[1])):
        for run in (run_a, run_b):
            dst = tmp_path / run.name / name / run.name
            redact_run(run, dst, corpus_policy(), secret, map_path_for(root))
            out[(name, run.name)] = _placeholder_for(run, dst, ORIGINAL)
    same_site = {png_tag(out[("a", r.name)]) for r in (run_a, run_b)}
    other_site = {png_tag(out[("b", r.name)]) for r in (run_a, run_b)}
    assert len(same_site) == 1 and len(other_site) == 1
    assert same_site != other_site
    # Equal originals give byte-equal placeholders (so equal wandb file names), per site.
    assert out[("a", run_a.name)] == out[("a", run_b.name)]
    assert out[("a", run_a.name)] != out[("b", run_a.name)]


def test_tag_is_hmac_of_the_original_under_the_secret() -> None:
    data = b"\x89PNG fake bytes"
    assert placeholders.tag(b"k" * 32, data) == hmac.new(b"k" * 32, b"media\x00" + data, hashlib.sha256).hexdigest()
    assert placeholders.tag(b"k" * 32, data) != placeholders.tag(b"j" * 32, data)
    assert placeholders.tag(b"k" * 32, data) != hashlib.sha256(data).hexdigest()


def test_placeholders_keep_kind_and_shape() -> None:
    import io
    import wave

    from PIL import Image
    png = placeholders.image_png(40, 17, "ab" * 32)
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        assert im.size == (40, 17)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2); w.setsampwidth(2); w.setframerate(8000); w.writeframes(b"\x01\x02" * 2 * 8000 * 3)
    frames, rate, ch = placeholders.audio_shape(buf.getvalue())
    silent = placeholders.silent_wav(frames, rate, ch, "cd" * 32)
    with wave.open(io.BytesIO(silent)) as w:
        assert (w.getnframes(), w.getframerate(), w.getnchannels()) == (8000 * 3, 8000, 2)
        assert set(w.readframes(w.getnframes())) == {0}
    gif = placeholders.video_gif(64, 48, "ef" * 32)
    with Image.open(io.BytesIO(gif)) as im:
        assert im.size == (64, 48) and im.format == "GIF"
    for fmt in ("JPEG", "GIF", "PNG"):
        buf = io.BytesIO()
        Image.new("RGB", (33, 21)).save(buf, fmt)
        assert placeholders.image_size(buf.getvalue()) == (33, 21), fmt
    assert placeholders.image_size(b"not an image", (7, 5)) == (7, 5)
    page = placeholders.html_page("01" * 32)
    assert b"0101" in page and b"<p>" in page
