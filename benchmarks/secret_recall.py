"""Secret-detection recall on a planted set, and false positives on ordinary names and lines.

    python benchmarks/secret_recall.py [--seed 7] [--per-form 20] [--corpus DIR]

The planted set is generated here, from the published formats of each kind of credential,
with random content (seeded), in the contexts training code puts them: bare, in a sentence, in
``key: value``, after a flag, in JSON text. Some forms are there to be missed honestly (a bare
word password with no key before it cannot be told from a word). Recall counts a planted
secret as caught only if no 12-character piece of it survives the scrubber.

False positives: every history/summary/config key of the corpus runs, a list of ordinary
metric names, and ordinary console lines: any change to one of them is a false positive.
Run by ``bench_redact.py`` too.
"""
from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
B64 = string.ascii_letters + string.digits + "+/"
ALNUM = string.ascii_letters + string.digits


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def forms(rng: random.Random) -> dict[str, str]:
    """One secret of each form (the value that must not survive)."""
    hexd = "0123456789abcdef"
    return {
        "wandb_key_bare": _r(rng, hexd, 40),
        "wandb_local_key": "local-" + _r(rng, hexd, 40),
        "github_token": "ghp_" + _r(rng, ALNUM, 36),
        "github_pat": "github_pat_" + _r(rng, ALNUM + "_", 60),
        "gitlab_token": "glpat-" + _r(rng, ALNUM + "_-", 20),
        "huggingface": "hf_" + _r(rng, ALNUM, 34),
        "openai": "sk-" + _r(rng, ALNUM, 48),
        "openai_project": "sk-proj-" + _r(rng, ALNUM + "_-", 64),
        "slack_bot": "xoxb-" + "-".join(_r(rng, string.digits, 11) for _ in range(2)) + "-" + _r(rng, ALNUM, 24),
        "slack_webhook": "https://hooks.slack.com/services/T" + _r(rng, ALNUM.upper(), 8) + "/B" + _r(rng, ALNUM.upper(), 8) + "/" + _r(rng, ALNUM, 24),
        "google_api_key": "AIza" + _r(rng, ALNUM + "_-", 35),
        "aws_key_id": "AKIA" + _r(rng, string.ascii_uppercase + string.digits, 16),
        "aws_secret_bare": _r(rng, B64, 40),
        "stripe": "sk_live_" + _r(rng, ALNUM, 24),
        "sendgrid": "SG." + _r(rng, ALNUM + "_-", 22) + "." + _r(rng, ALNUM + "_-", 43),
        "jwt": "eyJ" + _r(rng, ALNUM, 20) + ".eyJ" + _r(rng, ALNUM, 30) + "." + _r(rng, ALNUM + "_-", 43),
        "pem": "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(_r(rng, B64, 64) for _ in range(4)) + "\n-----END RSA PRIVATE KEY-----",
        "random_b64_32": base64.b64encode(rng.randbytes(24)).decode(),
        "password_word": _r(rng, string.ascii_lowercase, 6) + "-" + _r(rng, string.ascii_lowercase, 7),
        # a person's password: eight letters and digits, too short to look random (one digit at least)
        "password_short": _r(rng, string.ascii_letters, 5) + _r(rng, string.digits, 1) + _r(rng, ALNUM, 2),
        "url_password": _r(rng, ALNUM, 14),
    }


def contexts(name: str, secret: str) -> list[tuple[str, str]]:
    """(context name, text) placements of one secret."""
    if name in ("password_word", "password_short"):
        return [("key_colon", f"db password: {secret}"), ("flag", f"--password {secret}"),
                ("json", json.dumps({"password": secret})), ("bare_sentence", f"using {secret} today"),
                ("prose", f"the password is {secret}")]
    if name == "url_password":
        return [("url", f"postgres://trainer:{secret}@db.internal:5432/runs")]
    if name == "pem":
        return [("bare", secret), ("in_text", f"key follows\n{secret}\nend")]
    return [("bare", secret), ("sentence", f"using {secret} for the upload"),
            ("key_value", f"token = {secret}"), ("json", json.dumps({"credential": secret})),
            ("bearer", f"Authorization: Bearer {secret}"), ("prose", f"logging in with token {secret}")]


ORDINARY_NAMES = [
    "loss", "train/loss", "val/loss", "train/acc", "val/accuracy", "lr", "learning_rate", "epoch", "step",
    "global_step", "grad_norm", "grad_norm/layer_10", "tokens_per_second", "train/tokens_seen", "num_tokens",
    "throughput/samples_per_sec", "gpu.0.memoryAllocated", "system/gpu.0.temp", "val/ConfusionMatrix_class10_precision",
    "ModelCheckpoint_EfficientNetB0_fold1_epoch10", "train/learning_rate_schedule_Warmup1000Steps",
    "eval/bleu", "eval/rouge-L", "perplexity", "kl_divergence", "dice/P_mean", "samples/ct", "samples/mask",
    "predictions", "best_val_acc", "disk./.usagePercent", "proc.memory.rssMB", "network.sent", "_step", "_runtime",
    "_timestamp", "optimizer/adam_beta1", "weights/conv2d_1/kernel", "activations/dense_3/histogram",
    "attention/head_07/entropy", "data/augment/random_crop_prob", "lr_scheduler/cosine_T_max",
]
ORDINARY_LINES = [
    "Epoch 3/10 - loss: 0.2345 - accuracy: 0.9123 - val_loss: 0.3011",
    "tokens: 512, tokens_per_sec: 10432.5", "step 1200 | lr 3.0e-04 | grad_norm 1.27",
    "Saving checkpoint to checkpoints/epoch_10.ckpt", "Downloading https://example.org/data/cifar-10.tar.gz",
    "torch version 2.3.0+cu121, tensorflow 2.21.0", "Restored model weights from the end of the best epoch: 7.",
    "100%|##########| 469/469 [00:12<00:00, 38.61it/s]", "WARNING: the password field is empty",
    "commit-ish: v1.2.3-4-gdeadbee",
]


def corpus_names(corpus: Path) -> list[str]:
    sys.path.insert(0, str(REPO))
    from tfwb_agent.wandb_log import read_records
    names: set[str] = set()
    for log in corpus.glob("*/wandb/offline-run-*/*.wandb"):
        for _, rec in read_records(log):
            t = rec.WhichOneof("record_type")
            items = {"history": lambda: rec.history.item, "summary": lambda: rec.summary.update,
                     "config": lambda: rec.config.update, "stats": lambda: rec.stats.item}.get(t)
            for it in (items() if items else ()):
                nested = getattr(it, "nested_key", ())
                names.add(".".join(nested) if len(nested) else it.key)
    return sorted(names)


def measure(seed: int = 7, per_form: int = 20, corpus: Path | None = None) -> dict:
    from tfwb_agent.redact.placeholders import text_tag
    from tfwb_agent.redact.secrets import Scrubber, compile_patterns

    s = Scrubber(compile_patterns(), lambda k, v: text_tag(b"bench-secret-0123456789", k, v))
    rng = random.Random(seed)
    caught: dict[str, list[int]] = {}
    for _ in range(per_form):
        for name, secret in forms(rng).items():
            for ctx, text in contexts(name, secret):
                out = s.scrub(text)[0]
                pieces = [secret[i:i + 12] for i in range(0, max(1, len(secret) - 11))]
                ok = not any(p in out for p in pieces if p.strip())
                caught.setdefault(f"{name}/{ctx}", [0, 0])
                caught[f"{name}/{ctx}"][0] += ok
                caught[f"{name}/{ctx}"][1] += 1
    names = ORDINARY_NAMES + (corpus_names(corpus) if corpus else [])
    fp_names = [n for n in names if s.scrub_name(n)[0] != n]
    fp_lines = [ln for ln in ORDINARY_LINES if s.scrub(ln)[0] != ln]
    total = sum(c[1] for c in caught.values())
    found = sum(c[0] for c in caught.values())
    return {"recall": found / total, "planted": total, "caught": found,
            "missed_by_placement": {k: f"{c[1] - c[0]}/{c[1]}" for k, c in sorted(caught.items()) if c[0] < c[1]},
            "names_checked": len(names), "names_changed": fp_names,
            "lines_checked": len(ORDINARY_LINES), "lines_changed": fp_lines}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-form", type=int, default=20)
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    args = ap.parse_args()
    res = measure(args.seed, args.per_form, args.corpus if args.corpus.is_dir() else None)
    print(f"recall: {res['caught']}/{res['planted']} = {res['recall']:.3f}")
    for k, v in res["missed_by_placement"].items():
        print(f"  missed {v}: {k}")
    print(f"false positives: {len(res['names_changed'])} of {res['names_checked']} metric/key names changed"
          f"{': ' + ', '.join(res['names_changed']) if res['names_changed'] else ''}")
    print(f"                 {len(res['lines_changed'])} of {res['lines_checked']} ordinary console lines changed")
    for ln in res["lines_changed"]:
        print(f"    {ln}")


if __name__ == "__main__":
    main()
