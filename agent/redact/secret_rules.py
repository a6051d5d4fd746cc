"""What counts as a secret: the rule tables the scrubber (``secrets.py``) applies.

- ``EXTRA_TOKEN_RULES``: token formats beside detect-secrets' own (the whole match goes);
  ``LAST_TOKEN_RULES`` are asked after detect-secrets';
- ``CONTEXT_RULES``: the value after a secret-looking key or flag (group ``v`` goes);
- ``PATH_PATTERN``: absolute and home-relative local paths;
- ``key_secrecy``: what a key's name (config, summary, history, metadata, a flag) says of the
  value under it.

Plain data and pure functions: nothing here is compiled per run.
"""
from __future__ import annotations

import functools
import re

# Formats detect-secrets lacks or matches too narrowly for what training code prints.
EXTRA_TOKEN_RULES: tuple[tuple[str, str], ...] = (
    ("pem_private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"),
    # W&B API keys: 40 hex characters (and the local-/v1 forms of W&B Server). Not where git's
    # commit ids stand, as ordinary output prints them: ``git log``'s ``commit <id>``, pip's
    # ``….git@<id>``, a Hugging Face cache's ``/snapshots/<id>/``, a URL's ``/commit/<id>``.
    ("wandb_api_key", r"(?<![0-9A-Fa-f])(?<!commit )(?<!commit:)(?<!commit: )(?<!commit=)(?<!commit\": \")"
                      r"(?<!\.git@)(?<!/snapshots/)(?<!/resolve/)(?<!/commit/)(?<!/tree/)[0-9a-f]{40}(?![0-9A-Fa-f])"),
    ("wandb_local_key", r"\blocal-[0-9a-f]{40}\b"),
    ("wandb_v1_key", r"\bwandb_v1_[A-Za-z0-9_]{20,}"),
    # (Three digits in it: random keys have many; sklearn's CSS classes and ids,
    # ``sk-toggleable__control``, ``sk-estimator-id-1``, have not.)
    ("openai_key", r"\bsk-(?:proj-|ant-|svcacct-)?(?=(?:[A-Za-z_-]{0,200}\d){3})[A-Za-z0-9_-]{20,}"),
    ("slack_token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    ("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}\b"),
    # Lower-case hex after a vendor's prefix (no upper case: the entropy rule never takes them).
    ("databricks_token", r"\bdapi[0-9a-f]{32}(?:-\d+)?\b"),
    ("langsmith_key", r"\blsv2_(?:pt|sk)_[0-9a-f]{32}_[0-9a-f]{10}\b"),
    ("digitalocean_token", r"\bdo[opr]_v1_[0-9a-f]{64}\b"),
    # After anything but a letter or digit: "_" too (``maps_AIza…``, ``GOOGLE_KEY_AIza…``); after a
    # letter or digit "AIza" is inside a longer token (base64, a hash), not a key's start.
    ("google_api_key", r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}"),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),
    ("github_pat", r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    # Atlassian API tokens (Jira, Confluence): a fixed start, then base64url and "=" and a checksum.
    ("atlassian_api_token", r"\bATATT3[A-Za-z0-9_=-]{60,}"),
    # Azure DevOps personal access tokens: 52 characters of lower-case base32 (one digit at least:
    # no word of prose is that long without a break).
    ("azure_devops_pat", r"(?<![A-Za-z0-9])(?=[a-z2-7]{0,51}[2-7])[a-z2-7]{52}(?![A-Za-z0-9])"),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    # A bare AWS secret access key: 40 characters of base64 with upper, lower and digits.
    ("aws_secret_access_key", r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])"
                              r"(?=[A-Za-z0-9/+]{0,39}[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    # A crypt(3) password hash (htpasswd, /etc/shadow): offline guesses test passwords against it.
    ("password_hash", r"\$(?:apr1|2[abxy]|1|5|6|y|argon2(?:id|i|d))\$[^\s\"':]{8,}"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"),
    # (No user is a user too: ``redis://:pw@host``; the password runs to the authority's last
    # "@": one with an "@" in it goes whole.)
    # A password may hold "/" (``openssl rand -base64``): then it runs to the first "@", and is no
    # port (``https://host:8080/a@b`` is a URL's path).
    ("url_credentials", r"\b[a-z][a-z0-9+.-]{0,30}://[^\s/:@]{0,256}:(?:[^\s/]+|(?!\d{1,5}/)[^\s@]{1,256})@"),
    # The same URL made a file name, "/" made "_" (``https:__ml:X@minio.internal:9000_models_x.pt``).
    ("url_credentials", r"\b[a-z][a-z0-9+.-]{0,30}:__[^\s:@]{0,256}:[^\s@]{1,256}@"),
    # A user and password with no scheme (a Go or MySQL DSN ``ml:X@tcp(db:3306)/x``, ``ml:X@db.internal``):
    # the host a DSN's, a dotted name, ``localhost`` or a name and port (not ``repo:tag@sha256:…``).
    # The password may hold "/" (``openssl rand -base64``), but is no port and path
    # (``host:8080/a@b``) and no URL's (``git+https://github.com/o/r2@v1``); "/", "-" and "_"
    # count as symbols (``GqkJxwU/yYQO``, ``token_urlsafe``).
    ("dsn_credentials", r"(?<![\w:@.-])(?!(?:mailto|e-?mail|mail|contact|cuda|rank)\b)[A-Za-z][\w.-]{0,63}:"
                        r"(?P<v>(?![\d.]+@|\d{2,5}/|//)(?=[^\s:@\"'`<>;]{0,255}[\d!#$%^&*+=?~/_-])[^\s:@\"'`<>;]{1,256})@(?=(?:tcp|unix|udp)\(|(?!sha\d|md5|blake)"
                        r"[\w-]{1,63}(?:(?:\.[\w-]{1,63})+|:\d{1,5}\b|\b(?![.:@]))|localhost\b)"),
    # A token as a URL's user (``https://<token>@git.example/…``): no user name is that long.
    ("url_token_user", r"(?<=://)[^\s/:@]{20,}(?=@)"),
    # After "=" too: a key's value (``GITHUB_PAT=…``, a Hydra override ``hub.pat=…``, a cookie's
    # ``session=…``) whatever the key's name.
    ("high_entropy_token", r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/_=-])"),
)

# Asked after detect-secrets' rules (a whole token is named by the rule of its kind): a token cut
# short where it is printed (a Keras summary's column ends a layer named after one with "…"). A
# vendor's prefix and a dozen characters are enough to know it; after "_" too (``dense_ghp_…``),
# not inside a longer word.
LAST_TOKEN_RULES: tuple[tuple[str, str], ...] = (
    ("vendor_token_prefix", r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{12,}|github_pat_[A-Za-z0-9_]{12,}"
                            r"|glpat-[A-Za-z0-9_-]{12,}|dckr_pat_[A-Za-z0-9_-]{12,}|hf_[A-Za-z0-9]{12,}"
                            r"|sk-(?:proj-|ant-|svcacct-)?(?=(?:[A-Za-z_-]{0,200}\d){3})[A-Za-z0-9_-]{12,}|xox[abposre]-[A-Za-z0-9-]{8,}"
                            r"|AIza[0-9A-Za-z_-]{12,}|npm_[A-Za-z0-9]{12,}|pypi-AgE[A-Za-z0-9_-]{12,})"),
    # A home's path with "/" made "_" (wandb 0.15's key for a TensorBoard image,
    # ``_home_alice_data_ct.png``). A rule of its own, not a part of ``PATH_PATTERN``: it matches
    # word characters alone, and a pattern is read whole for how short a plain word may be
    # (``rule_reach``): the path rule's shortest match would then be that bound.
    ("local_path", r"(?<![A-Za-z0-9.-])_(?:home|Users)_(?!team_)[A-Za-z0-9][A-Za-z0-9.-]*_[\w.-]+"),
)

# (The part of a key after its secret-looking word is at most 100 characters long in these rules,
# and taken whole (possessive): a run of word characters tens of thousands long, a JWT or a dotted
# blob, is searched in time proportional to its length, not to its square. What comes before the
# word is not matched at all: the word is found wherever it is, ``model.…._db_password`` however
# long its start. Matching a prefix there cost some 100 steps at every character of such a run.)
# ``-key`` ends a key (``api-key``, ``x.-key``), never starts one (`` -key``, ``---key``).
_DASH_KEY = r"(?<=[\w.-])(?<![^\w.-]-)(?<!^-)-key(?![a-z0-9])"
# Words that make a key secret-looking in text (a regex alternation; ``console`` asks it too).
# (``passed: 10``, ``passes``, ``passthrough``, ``bypass``, ``highpass`` are no passwords.)
SECRET_KEYWORDS = (r"(?:pass(?:word|wd|phrase)|(?<![a-z])pass)(?!ed\b|es\b|ing|age|enger|[-_]?through)|pwd|secret"
                   r"|api[-_]?key|apikey"
                   r"|access[-_]?key|private[-_]?key|credentials?|auth[-_]?token|access[-_]?token|client[-_]?secret"
                   r"|session[-_]?key")
# "token" as a key's word, not a tokenizer's or a model input's (``tokenizer: bert``, ``token_type_ids``).
_TOKEN = r"token(?!i[sz]|[-_]type)"
_SEP = r"(?:[^\S\n]+|[^\S\n]*\n[^\S\n]*)"     # blanks, or one line break (and blanks around it)
# A value, after its opening quote if it has one: a quoted one whole, up to its closing quote (or
# the line's end: ``password: "correct horse battery"``); an unquoted one up to a blank, past a
# "," or ";" inside it (``password=ab,cd``), not one that ends it (``password: x, user: y``).
# Fail closed: ``pw=x;user=y`` loses the user too. A value that opens an object or a list
# (``{"db_password": {"value": x}}``) goes to the line's end: no regex finds where it closes.
# Before an unquoted value, what YAML puts there is skipped (a block scalar's ``|`` or ``>-`` and
# its line break, an anchor ``&pw``, a tag ``!!str``), and so is the opening of a triple-quoted
# string (its line break too: TOML's ``password = '''`` and the value below); so is a list's
# dash or a mapping's key on the next line (``passwords:\n  - X``, ``db_password:\n  value: X``:
# the value is below its key, and neither "-" nor "value:" is it (a key of letters alone, with a
# value after it: a value with a digit and a ":" after it, ``password=2yW4…: ``, is the value, and
# so is one of letters with nothing after its ":"); a number or a special token there is none,
# ``token_stats:\n  mean: 512.3``, ``special_tokens:\n  - <pad>``); a value that is itself a
# secret-looking key with a value of its own (``secret: password: X``: the second key's value
# goes; a random value that happens to start with "pwd", ``password=PwD2…: ``, is no key, nor is
# base64's padding a key's "=") or a literal (``use_auth_token=True``; ``null-VGYb…`` is no
# literal) is none, and nor is punctuation alone (``**`` closing Markdown's
# emphasis, ``>`` of a ``=>``).
_NOT_NUMBER_OR_SPECIAL = r"""(?![-+]?\d[\d.,eE+-]*(?:\s|$)|</?\|?[\w.-]{0,100}\|?>|\[[A-Z][A-Z0-9_]{0,100}\])"""
_YAML_PREFIX = (r"""(?:(?<![\w"'])(?:[|>][-+0-9]*[^\S\n]*\n[^\S\n]*|&[\w-]+[^\S\n]+|!!?[\w-]{0,100}[^\S\n]+"""
                rf"""|[A-Za-z_.-]{{1,100}}:[^\S\n]+{_NOT_NUMBER_OR_SPECIAL})|(?<=["'])(?:""|'')(?:[^\S\n]*\n)?"""
                rf"""|\n[^\S\n]*(?:-[^\S\n]+|[A-Za-z_.-]{{1,100}}:[^\S\n]+){_NOT_NUMBER_OR_SPECIAL})""")
_VALUE = (r"""(?!(?:True|False|None|true|false|null)(?![\w/+=:-]))"""
          rf"""{_YAML_PREFIX}?(?![*_>=~`-]{{1,4}}(?:\s|$)|>|&(?:quot|apos|#x?0*[0-9a-fA-F]{{2}});)(?:(?<=")(?:[^"\\\n]|\\.)*|(?<=')(?:[^'\\\n]|\\.)*|(?<!["'])[{{\[][^\n]*"""
          rf"""|(?<!["'])(?![\w.-]{{0,100}}(?:{SECRET_KEYWORDS}|{_TOKEN})[\w.-]{{0,100}}+["']?[:=](?!=)[^\S\n]*+[^\s=])"""
          rf"""(?!-[^\S\n]|[A-Za-z_.-]{{1,100}}:[^\S\n]++\S)[^\s"']*[^\s"',;])""")
# A key whose last word is "key" names a credential (``api_key``, ``encryption_key``,
# ``Ocp-Apim-Subscription-Key``) unless the word before says it is another kind of key: an
# unknown one fails closed.
PLAIN_KEY_KINDS = frozenset({
    "sort", "primary", "foreign", "cache", "monitor", "metric", "dict", "hash", "group", "partition", "shard",
    "join", "lookup", "index", "data", "dataset", "input", "output", "label", "image", "text", "target",
    "feature", "column", "row", "model", "layer", "attention", "attn", "query", "value", "random", "rng",
    "seed", "prng", "frame", "map", "sample", "batch", "class", "config", "run", "table", "log", "file",
    "path", "name", "id", "node", "task", "job", "step", "split", "train", "val", "test", "eval", "hot",
    "music", "midi", "chord", "note", "tonic", "scale", "cluster", "bucket", "object", "s3", "record", "line",
    "field", "entry", "item", "result", "event", "state", "lock", "composite", "natural", "surrogate",
    "num", "n", "max", "min", "total", "count", "unique", "missing", "new", "old",
    # the columns and fields a data pipeline reads by name (diffusion, RLHF, RL, multimodal)
    "stage", "conditioning", "control", "caption", "prompt", "response", "chosen", "rejected", "instruction",
    "messages", "message", "question", "answer", "context", "obs", "observation", "action", "reward", "done",
    "info", "audio", "video", "mask", "latent", "pos", "neg", "anchor", "teacher", "student", "ema", "momentum",
    "rotary", "keypoint", "memory", "scan", "study", "series", "slice", "segment", "first", "cond", "public",
})
_PLAIN_KINDS = "|".join(sorted(PLAIN_KEY_KINDS, key=len, reverse=True))
# A tokenizer's special tokens (``eos_token: "</s>"``, ``pad_token_id``) are no credentials.
SPECIAL_TOKEN_KINDS = frozenset({"eos", "bos", "pad", "unk", "sep", "cls", "mask", "stop", "special", "added",
                                 "start", "end", "image", "audio", "video", "vision", "additional", "assistant",
                                 "eot", "boi", "eoi", "num", "max", "min", "new", "total"})
# Flags that name no secret-looking word but take one: only these exact flags (``--key-frames 10``
# and ``--auth-type basic`` are other flags; ``-p`` is too vague).
_FLAG_WORDS = r"auth|authorization|auth[-_]?key|key|cookies?|(?:\w+[-_])?pw|(?:\w+[-_])?pat"
# "pw" as a key is a word of its own or a name's last part (``pw``, ``db_pw``, ``DB-PW``), never
# a piece of one (``upward``, ``pwm_duty``); not ``pW`` (a padding's width), and its value is no
# plain number (``pw = 3``).
_PW_KEY = r"(?=[pP])(?:(?<=[_.-])|(?<![\w.-]))(?:pw|PW|Pw)(?!\w)"
# Between a key and its value: ":" or "=" (full-width too: ``password：X``), percent-encoded too,
# once or twice (a URL inside a URL's parameter: ``next=%2Fapi%3Faccess_token%3DX``, ``%253D``);
# its closing quote, escaped too, up to three times over (JSON printed inside a string:
# ``\"password\": \"x\"``), or a subscript's (``cfg["password"] = x``); then the value's
# opening quote, of a bytes literal too (``'password': b'x'``). Markdown's emphasis around a
# key's end (``- **Password:** X``, ``**password** = X``), PHP's and Perl's ``=>`` (``[password]
# => X``), HTML-escaped quotes (``&quot;password&quot;: &quot;X``). (Not an arrow: ``tokens ->
# Embedding -> Dense`` draws a model.) A line break between them may be
# written out (``\\n`` in a ``repr``), and so may colour codes after the key
# (``\x1b[33mDB_PASSWORD\x1b[0m=X`` in the repr of a coloured tool's output).
_KEY_TO_VALUE = (r"""(?:\\(?:x1b|u001b|033|e)\[[0-9;]{0,20}m){0,4}(?:\\{0,7}["']|&quot;|&apos;|&#x?0*(?:27|39|22|34);)?\]?"""
                 r"""(?:\*{1,2}|_{1,2}|`)?\s*(?:=>|[:=：＝]|%(?:25)?3[AaDd])(?:\*\*|__)?"""
                 r"""(?:\s|\\[nrt])*(?:b(?=["']))?(?:\\{0,7}["']|&quot;|&apos;|&#x?0*(?:27|39|22|34);|`)?""")
# A number as metrics are printed (``-1.2e-05``, ``nan``, ``85%``, ``5.2B``, a version ``==2.4.1``),
# up to where a value ends (a blank, a quote, a separator, a closing bracket: ``tokens_per_sec=
# 6318.0]`` in a progress bar; a "/" before a number that ends it, or a unit: ``3/10``,
# ``6318.0/s``). A unit's letter as printed (``5.2B``, not ``7g``), and a "/" before more:
# ``5/fxqgAm…``, ``6/3txik…`` (base64) are no numbers.
_NUMBER_END = r"""(?:[\s"',;\])}|&`]|$)"""
_NOT_A_NUMBER = (rf"""(?!=?[-+]?(?:\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?|nan|inf)(?:%|(?-i:[kKMBGT])|x)?"""
                 rf"""(?:{_NUMBER_END}|/(?=\d+(?:\.\d+)?{_NUMBER_END}|[A-Za-z]{{1,4}}(?![\w/+=]))))""")
# A tokenizer's special token (``eos_token: </s>``, ``<|im_end|>``, ``[PAD]``) or an argparse metavar
# (``--hub_token HUB_TOKEN``, ``[INCLUDE_TOKENS_PER_SECOND]``) is no secret.
# (A metavar has a digit only beside an underscore, ``S3_PATH``: ``FUURN83S`` is a password. It
# ends where the value does: ``Y/zyCy…``, ``QWERTY-7f9a…`` are base64 and urlsafe tokens.)
_NOT_A_PLACEHOLDER = (r"""(?!["'`]?(?:</?\|?[\w.-]{0,100}\|?>|\[[A-Z][A-Z0-9_]{0,100}\]"""
                      r"""|(?:[A-Z][A-Z_]{0,100}|[A-Z][A-Z0-9]{0,100}_[A-Z0-9_]{0,100})\b(?![a-z0-9/+=@~-])))""")
# A key that ends on a credential's word, whatever its value (``db_password``, ``api_key``; not
# ``pass_rate``, ``max_tokens``): for shapes where a number or a word is as likely a metric.
_ENDS_CREDENTIAL = (r"""[\w.-]{0,100}(?:pass(?:word|wd|phrase)|pwd|secret|api[-_]?key|apikey|access[-_]?key"""
                    r"""|private[-_]?key|secret[-_.]?key|credentials?|client[-_]?secret)(?![\w-])""")
# What comes before a value in prose (the ``prose_secret`` rules below).
_PROSE_LEAD = (r"""(?i)(?<![\w.-])(?:pass(?:word|wd|phrase)|pwd|secret(?:[ _-]?key)?|token|api[ _-]?key|access[ _-]?key"""
               r"""|credentials?)(?![A-Za-z])[^\S\n]++(?:(?:is|was|of|now|to|set[^\S\n]+to"""
               r"""|for[^\S\n]+[\w.@-]{1,64}+(?:[^\S\n]+is)?:?|:)[^\S\n]++)?["'`]?""")
# A flag's dashes (``--password-stdin`` takes no value: the password comes on standard input. A
# single-dash "flag" with two capitals, or a capital and a digit, is a value glued to a short
# flag: ``-pZqHcOXRpPwdq…`` is mysql's ``-p`` and a password that holds "pwd", not a flag that
# takes the next word, ``-h``.)
_FLAG_START = (r"(?<![\w-])(?:--|-(?-i:(?![a-z0-9_-]{0,100}+[A-Z][a-z_-]{0,100}+[A-Z0-9]"
               r"|[A-Za-z_-]{0,100}+\d[a-z0-9_-]{0,100}+[A-Z])))(?!-)")
# The value after a secret-looking key or flag. Group ``v`` is what goes.
CONTEXT_RULES: tuple[tuple[str, str], ...] = (
    # A flag that ends on its word takes any value (``--password 1234``); one that goes on past
    # it names something about one, and a number there stays (``--max-tokens 4096``,
    # ``--pad-token-id=0``, ``--pass-rate 0.9``).
    ("flag_value", rf"(?i){_FLAG_START}(?:[\w-]{{0,100}}(?:{SECRET_KEYWORDS}|{_TOKEN})|(?:{_FLAG_WORDS}"
                   rf"|(?!(?:{_PLAIN_KINDS})[-_]key(?![\w-]))[\w-]{{0,100}}[-_]key))(?![\w-])(?:=|\s+)(?-i:{_NOT_A_PLACEHOLDER})"
                   rf"[\"']?(?P<v>{_VALUE})"),
    ("flag_value", rf"(?i){_FLAG_START}[\w-]{{0,100}}(?:{SECRET_KEYWORDS}|{_TOKEN})[\w-]{{1,100}}+(?<!-stdin)(?:=|\s+)"
                   rf"(?-i:{_NOT_A_PLACEHOLDER})[\"']?(?P<v>{_NOT_A_NUMBER}{_VALUE})"),
    # A key that ends on a credential's word: its value goes whatever it is (``password: 1234``);
    # one that goes on past it names something about one (``pass_rate``, ``password_reset_rate``):
    # a number there stays.
    ("key_value", rf"(?i)(?:{SECRET_KEYWORDS}|{_DASH_KEY}){_KEY_TO_VALUE}(?P<v>{_VALUE})"),
    ("key_value", rf"(?i)(?:{SECRET_KEYWORDS}|{_DASH_KEY})[\w.-]{{1,100}}+{_KEY_TO_VALUE}(?P<v>{_NOT_A_NUMBER}{_VALUE})"),
    # "tokens: 512" is a count, not a secret: a token's value must not be a plain number.
    # (Nor a shape in a Keras summary's table, ``│ input_tokens │ (None, 16) │``.)
    ("key_value", rf"(?i){_TOKEN}[\w.-]{{0,100}}+{_KEY_TO_VALUE}(?P<v>{_NOT_A_NUMBER}(?!\()(?-i:{_NOT_A_PLACEHOLDER}){_VALUE})"),
    # A name that ends in "key" or names a signature, where a credential is written so: an
    # environment line (``AZURE_OPENAI_KEY=…``, ``GITHUB_PAT=…``, ``REDIS_AUTH: …`` in conda's
    # ``variables:``, upper case), a URL's parameter (``?sig=…``,
    # ``&X-Amz-Signature=…``), a quoted key with a quoted value (``{"encryption_key": "…"}``). Code (``sort_key = x``, ``fn(signature=sig)``,
    # ``run_key: str``) is none of these. (A header's ``-Key:``, ``Ocp-Apim-Subscription-Key: …``,
    # is a keyword of the rule above.)
    ("key_value", rf"(?<![\w.-])[A-Z0-9_]{{0,100}}_(?:KEY|PAT)=(?P<v>{_NOT_A_NUMBER}{_VALUE})"),
    # (After ":", as in conda's ``variables:`` or a YAML dump of the environment, a value with a
    # digit or 16 characters: ``IMAGE_KEY: image``, ``NCCL_IB_AUTH: none`` are settings.)
    # (``=`` and a quoted key too, for AUTH and CREDS: ``PROXY_AUTH=user:pw`` in ``env`` output,
    # ``{'MONGO_AUTH': 'user:pw'}`` printed from os.environ.)
    ("key_value", rf"(?<![\w.-])[A-Z0-9_]{{0,100}}_(?:(?:KEY|PAT|AUTH|CREDS?):|(?:AUTH|CREDS?)(?:=|[\"']:[^\S\n]*[\"']))[^\S\n]*"
                  rf"(?P<v>(?=[^\s\"']{{0,255}}\d|[^\s\"']{{16}}){_NOT_A_NUMBER}{_VALUE})"),
    # (In lower case, ``gcs_creds=…`` in a log line, ``"auth": "X"``, a Hydra override
    # ``db.auth=X``, and a bare ``auth: X`` in YAML: a value with a digit. ``proxy_auth=self.auth``
    # in a traceback's source line is code, ``auth: None`` and ``proxy_auth: kerberos5`` no
    # credentials.)
    ("key_value", rf"(?<![\w.-])(?:(?:[a-z0-9_.]{{0,100}}[_.])?(?:auth|creds?)(?:=|[\"']:[^\S\n]*[\"'])"
                  rf"|(?:auth|creds?):[^\S\n]+)[^\S\n]*"
                  rf"(?P<v>(?=[^\s\"'(]{{0,255}}\d){_NOT_A_NUMBER}{_VALUE})"),
    # Oracle's Easy Connect, ``user/password@host:1521/service`` or ``@db.example.org/service``
    # (oracledb, sqlplus).
    ("dsn_credentials", r"(?<![\w/.-])[A-Za-z_][\w$#.-]{0,63}/(?P<v>[^\s/@\"']{1,255})@"
                        r"(?=(?://)?(?:[\w.-]{1,253}:\d{2,5}|[\w-]{1,63}(?:\.[\w-]{1,63})*\.[A-Za-z][\w-]{0,62})/\w)"),
    # A table's row whose key cell names a credential: the next cell (``│ db_password │ X │``
    # drawn by rich, ``| api_key | X |`` by tabulate). Only a key that ends on such a word:
    # ``│ token_embedding │ Embedding │`` is a layer.
    # The key's cell may hold blanks and Markdown (``| **DB password** |``, ``| `api_key` |``).
    # (Blanks around each cell, as both draw them: ``|pwd|read|`` is a regular expression. The
    # key's cell first on its line: ``| user | password | host |`` is a header, and ``host`` no
    # value.)
    ("key_value", rf"(?im)^[^\S\n]*[│┃║|][^\S\n]+[*`_]{{0,2}}[\w.&' -]{{0,100}}?(?:{SECRET_KEYWORDS}|{_TOKEN}|creds?|api[ -]key"
                  rf"|access[ -]token)[*`_]{{0,2}}[^\S\n]+[│┃║|][^\S\n]+`?{_NOT_A_NUMBER}(?-i:{_NOT_A_PLACEHOLDER})"
                  rf"(?P<v>[^\s│┃║|`]{{1,255}})`?[^\S\n]+(?=[│┃║|])"),
    # A webhook's secret as a segment of its URL: Mattermost ``/hooks/<26>``, Teams
    # ``/IncomingWebhook/<hex32>/``, PagerDuty ``/integration/<hex32>/enqueue``.
    ("key_value", r"(?<=/hooks/)(?P<v>[a-z0-9]{26})(?![\w-])"),
    ("key_value", r"(?<=/IncomingWebhook/)(?P<v>[0-9a-fA-F]{32})(?![\w-])"),
    ("key_value", r"(?<=/integration/)(?P<v>[0-9a-fA-F]{32})(?=/enqueue)"),
    # conda's private channel URL, ``https://conda.anaconda.org/t/<token>/channel``.
    # (Hex, or a uuid after two letters: a forum's ``/t/<slug>/`` is words.)
    ("key_value", r"(?<=/t/)(?P<v>(?:[a-z]{2}-)?[0-9a-fA-F-]{16,256}+)(?=/)"),
    ("key_value", rf"(?i)(?<=[?&;])[\w.-]{{0,100}}(?:[_-]key|signature|(?<![a-z0-9])sig)=(?P<v>{_NOT_A_NUMBER}{_VALUE})"),
    # A URL's parameter that carries a credential under a short name (``&key=``, ``?session=``,
    # ``?jwt=``, an OAuth ``?code=``), a connection string's account key (``;AccountKey=…;``).
    ("key_value", r"(?i)(?<=[?&;#])(?:key|session(?:[-_]?id)?|sid|jwt|auth|code|ticket|accountkey|sharedaccesskey)"
                  r"=(?P<v>[^&;\s#\"']+)"),
    # Cookies: every value of the header (``Cookie: session=X; theme=dark``).
    ("cookie", r"(?i)(?:\b|(?<=\\[nrt]))(?:set-)?cookie[\"']?\s*[:=]\s*(?:b?[\"'])?(?P<v>[^\s\"';=]+=[^\n\"']*)"),
    # A secret-looking key beside its value in a list or a tuple, quoted both: a printed argv
    # (``['train.py', '--db-password', 'X']``, a CalledProcessError's command), ``('password',
    # 'X')``, ``os.environ.setdefault('DB_PASSWORD', 'X')``.
    # Headers as (name, value) pairs too (``[('Authorization', 'Basic X')]``, ``(b'cookie', b'…')``).
    # A key with no dash only first in its tuple: ``['user', 'password', 'host']`` names columns.
    ("key_value", rf"""(?i)["']--?[\w.-]{{0,100}}(?:{SECRET_KEYWORDS}|{_TOKEN})[\w.-]{{0,100}}+(?<!-stdin)["']\s*,\s*(?:b(?=["']))?["'](?P<v>{_VALUE})"""),
    ("key_value", rf"""(?i)(?<=[(\[])b?["'](?:[\w.-]{{0,100}}(?:{SECRET_KEYWORDS}|{_TOKEN})[\w.-]{{0,100}}+|(?:proxy-)?authorization|(?:set-)?cookie)["']\s*,\s*(?:b(?=["']))?["'](?P<v>{_VALUE})"""),
    # A name and its value given apart: a Kubernetes env entry (``{'name': 'DB_PASSWORD', 'value':
    # 'X'}``, or in YAML on two lines), a .NET setting (``<add key="Password" value="X"/>``).
    ("key_value", rf"""(?i)\b(?:name|key)["']?\s*[:=]\s*["']?[\w.-]{{0,100}}(?:{SECRET_KEYWORDS}|{_TOKEN})[\w.-]{{0,100}}+["']?\s*,?"""
                  rf"""\s*(?:-\s+)?["']?value["']?\s*[:=]\s*["']?(?P<v>{_VALUE})"""),
    # A column-aligned listing (a pandas Series, ``to_string()``): the key first on its line (after
    # a frame's row number: ``0  db_password  X``, a frame of keys and values), the value after two
    # blanks or more (not Python's ``pass  # comment``, nor prose after a full stop).
    ("key_value", rf"(?im)^[^\S\n]*(?:\d{{1,9}}[^\S\n]+)?(?!pass\b)[\w.-]{{0,100}}(?:{SECRET_KEYWORDS})[\w-]{{0,100}}+[^\S\n]{{2,}}(?=\w)"
                  rf"(?P<v>{_NOT_A_NUMBER}{_VALUE})"),
    # A key that ends in a credential's word first on its line, then ":" and a blank (YAML, a log
    # line): the value is the rest of the line, blanks and all (a passphrase, ``correct horse X``),
    # up to a "," before another key (``password: x1, user: bob``).
    ("key_value", r"(?im)^[^\S\n]*(?:-[^\S\n]+)?[\w.-]{0,100}(?:pass(?:word|wd|phrase|code)|pwd|secret)[:：][^\S\n]+"
                  r"(?P<v>(?![\"'|>&!{\[])(?!(?:true|false|null|none|~)[^\S\n]*(?:#|$))"
                  r"(?:[^\n,]|,(?![^\S\n]*[\w.-]{1,100}[:=]))*[^\s,])"),
    # A key alone on its line, its value alone on a line one to three lines below: in
    # ``output.log`` a line of the other stream may come between them (``password:``, a warning
    # on stderr, then the value). A line of one word only, with letters and a digit, is taken for
    # the value (not ``optimizer:``, ``main()``, ``done`` in a YAML dump or a traceback).
    ("key_value", rf"(?im)^[^\S\n]*[\w.-]{{0,100}}(?:{SECRET_KEYWORDS})[\w.-]{{0,100}}+[\"']?[^\S\n]*[:=：＝][^\S\n]*\r?\n"
                  r"(?:[^\n]{0,500}\n){1,3}?[^\S\n]*(?P<v>(?=[^\s\"'():]{0,255}\d)(?=[^\s\"'():]{0,255}[A-Za-z])"
                  r"[^\s\"'():]{6,256}+)[^\S\n]*\r?$"),
    # docker's config.json: ``"auth": "<base64 of user:password>"``.
    ("key_value", r"""(?i)["']auth["']\s*:\s*["'](?P<v>[A-Za-z0-9+/=]{8,})"""),
    # A validation error (pydantic): the field's name on its line, the value it was given on the next.
    ("key_value", rf"(?i)(?:{SECRET_KEYWORDS}|{_TOKEN})[\w.-]{{0,100}}+[^\S\n]*\n[^\n]*?\binput_value="
                  rf"""(?:["'])?(?P<v>{_VALUE})"""),
    # XML: ``<password>X</password>``.
    ("key_value", rf"(?i)<[\w:.-]{{0,100}}(?:{SECRET_KEYWORDS})[\w:.-]{{0,100}}+>(?P<v>[^<\n]*)<"),
    # SQL: ``CREATE USER u WITH PASSWORD 'X'``, ``IDENTIFIED BY 'X'``.
    ("key_value", r"(?i)\b(?:password|identified\s+by)\s+'(?P<v>(?:[^'\n]|'')*)'"),
    # requests' basic auth: ``auth=('user', 'X')``.
    ("key_value", r"""(?i)\bauth\s*=\s*\(\s*["'][^"'\n]*["']\s*,\s*["'](?P<v>[^"'\n]*)"""),
    # A .pgpass line, ``host:port:database:user:password``.
    ("pgpass", r"(?m)^[^\S\n]*(?=[^:\s]*[A-Za-z*])[\w.*-]+:(?:\d{1,5}|\*):[^:\s]+:[^:\s]+:(?P<v>\S+)$"),
    ("key_value", rf"""(?i)(?<=["'])[\w.-]{{0,100}}(?:[_-]key|signature)\\?["']\s*:\s*(?:b(?=["']))?\\?["'](?P<v>{_VALUE})"""),
    ("key_value", rf"{_PW_KEY}{_KEY_TO_VALUE}(?P<v>{_NOT_A_NUMBER}{_VALUE})"),
    # ``curl -u user:password``, ``--user user:password``.
    ("flag_value", r"(?=-)(?<![\w-])(?:-u(?=[^\s-])|(?:-u|--user|--proxy-user)[\s=]+)[\"']?[^\s:\"']+:(?P<v>[^\s\"']+)"),
    # (A tool's flag is looked for in the 200 characters after its name: a line of many such
    # names costs each one no more than that.)
    # A client's password glued to its flag (``mysql -u u -pX``, ``mysqldump -pX``, also in a
    # command's list repr, ``['mysqldump', '-pX']``) or after
    # ``sshpass -p``: ``-p`` alone is too vague to be a rule of its own.
    ("flag_value", r"(?=[m])(?<![\w-])(?:mysql(?:dump|admin|import|check|pump|sh)?|mariadb(?:-dump)?)\b[^\n]{0,200}?"
                   r"(?<=[\s\"'])-p(?P<v>[^\s\"']+)"),
    ("flag_value", r"(?=s)(?<![\w-])sshpass\s+(?:-\w+\s+)*-p\s*(?P<v>[^\s\"']+)"),
    # The same commands as a list's repr (a CalledProcessError's, ``['curl', '-u', 'ml:X']``).
    ("flag_value", r"""(?<=["'])(?:-u|--user|--proxy-user)["'],\s*["'][^\s:"']+:(?P<v>[^\s"']+)"""),
    ("flag_value", r"""(?<=["'/])(?:sshpass|redis-cli|zip|ssh-keygen|docker["'],\s*["']login)["'](?:,\s*["'][^"'\n]{0,200}["']){0,8}?"""
                   r""",\s*["'](?:-p|-a|-P|-N|--password)["'],\s*["'](?P<v>[^"'\n]+)"""),
    # Tools whose password flag is a letter of its own: ``redis-cli -a X``, ``docker login -p X``,
    # ``zip -P X``, ``7z a -pX``, ``ssh-keygen -N X``, ``smbclient -U user%X``, ``htpasswd -b file
    # user X``.
    ("flag_value", r"(?<![\w-])(?:redis-cli\b[^\n]{0,200}?\s-a\s+|docker\s+login\b[^\n]{0,200}?\s-p\s+|zip\b[^\n]{0,200}?\s-P\s+"
                   r"|7za?\b[^\n]{0,200}?\s-p|ssh-keygen\b[^\n]{0,200}?\s-N\s+|smbclient\b[^\n]{0,200}?\s-U\s+[^\s%]+%"
                   r"|htpasswd\s+-\w*b\w*\s+\S+\s+\S+\s+|unzip\b[^\n]{0,200}?\s-P\s+|sqlcmd\b[^\n]{0,200}?\s-P\s+"
                   r"|az\s+login\b[^\n]{0,200}?\s-p\s+|ldap\w{0,20}\b[^\n]{0,200}?\s-w\s+|podman\s+login\b[^\n]{0,200}?\s-p\s+)"
                   r"(?P<v>[^\s\"']+)"),
    # (In a bytes repr the header follows a written-out ``\r\n``; its value may be a bytes literal.)
    ("authorization", r"(?i)(?:\b|(?<=\\[nrt]))authorization[\"']?\s*[:=]\s*(?:b?[\"'])?(?:(?:bearer|basic|token|digest)\s+)?(?P<v>[^\s\"',;]+)"),
    ("bearer_token", r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9._~+/=-]{8,})"),
    # A .netrc entry, ``machine H login U password P`` (no colon; its tokens on one line or on
    # consecutive ones): the password after a ``machine X`` or ``login X`` pair and at most three
    # more such pairs. Prose about passwords ("password reset complete", "login with your
    # password") does not have that shape.
    ("netrc_password", rf"(?i)(?=[ml])(?<![\w-])(?:machine|login){_SEP}\S+(?:{_SEP}(?:machine|login|account){_SEP}\S+){{0,3}}"
                       rf"{_SEP}pass(?:word|wd){_SEP}(?P<v>\S+)"),
    # Prose: a credential's word, then (after "is", "was", "to", "for alice is" ...) a word of
    # six characters or more that has letters and a digit or a symbol and is no path (``Using
    # password hunter2x``, ``the API key is 9f8e7d6c5b``, ``token for svc-ci: ab12cd34``). An
    # English word after it has neither ("password reset complete", "token ids"); a number has
    # no letter ("token 50256"). Left: a password of letters alone ("password correct-horse").
    ("prose_secret", _PROSE_LEAD + r"""(?P<v>(?![(\[{<*%])(?=[^\s"'`]{0,127}[0-9!@#$^&+=?~])(?=[^\s"'`]{0,127}[A-Za-z])(?![^\s"'`]{0,128}[/\\])"""
                     r"""[^\s"'`,;=()\[\]]{6,128}+)(?![^\s"'`,;)\]])"""),
    # The same after base64's own shape, "/" and "=" padding in it (``Using password
    # q3v/Zx9KkP2mWw8s1TtQ7A==``; URL-safe, "-" and "_"): upper and lower case and a digit, 16
    # characters or more.
    ("prose_secret", _PROSE_LEAD + r"""(?P<v>(?=[\w+/-]{0,127}[A-Z])(?=[\w+/-]{0,127}[a-z])"""
                     r"""(?=[\w+/-]{0,127}[0-9])[\w+/-]{16,128}+={0,2})(?![^\s"'`,;)\]])"""),
    # A key that names a credential's kind where no rule above reads it: a line of a printed
    # config, YAML (``hmac_key: X``, ``basic_auth: X``, ``db_creds: X``), TOML (``hmac_key = "X"``),
    # an environment line (``GITHUB_PAT=X``), a Hydra override (``+storage.hmac_key=X``), and an
    # argument in a repr (``Namespace(lr=0.1, hmac_key='X')``, a dataclass's). The key's last
    # words are of a credential's kind, or it is ``pat`` alone (not ``loss_key``, ``pred_key``,
    # ``name_pat``: a config's
    # keys are read more widely, ``key_secrecy``); the value is one plain word with a digit or a
    # symbol, or random letters (twice a capital after a small letter, ten letters or more): not
    # code (``hmac_key = hmac_key``), no number nor pinned version (``x-key==2.29.0``), no glob.
    ("secret_key_name", r"""(?im)(?:^[^\S\n]*(?:-[^\S\n]+)?[+~]{0,2}|(?<=[(,{])[^\S\n]*)["']?(?P<k>(?:[\w-]{1,100}\.){0,20}"""
                        r"""(?:[\w-]{0,100}?(?:(?:hmac|api|access|secret|private|signing|sign|encryption|crypt|cipher|aes|license|licence"""
                        r"""|master|client|account|session|service|ssh|gpg|pgp|sas|storage|subscription|app|deploy|admin|root|shared"""
                        r"""|webhook|jwt|auth|secure|personal)[_-]?key|creds?|credentials|basic[_-]?auth|bearer|(?-i:[A-Z][A-Z0-9_]{0,100}_PAT))"""
                        r"""|pat))"""
                        r"""(?![\w-])["']?[^\S\n]*(?::[^\S\n]+|=(?!=)[^\S\n]*)["']?"""
                        r"""(?P<v>(?=[^\s"'`]{0,255}[0-9!@#$%^&*+=?~:/]|(?-i:(?=[A-Za-z]{10})(?:[A-Za-z]{0,255}?[a-z][A-Z]){2}))"""
                        r"""(?![(\[{<])(?![^\s"'`]{0,255}[*\\])(?![-+]?\d[\d.]*(?:\s|$))[^\s"'`,;()\[\]{}]{4,256})"""),
    # Cookies as a cookie jar prints them (``<Cookie sessionid=X for host/>``, ``Cookie(version=0,
    # name='JSESSIONID', value='X', …)``), and http.cookies (``<SimpleCookie: sid='X'>``).
    ("cookie", r"<Cookie [^\s=]{1,256}=(?P<v>[^\s]{1,4096}?) for "),
    ("cookie", r"<(?:SimpleCookie|Morsel): [^\s=]{1,256}=['\"]?(?P<v>[^\s'\">]{1,4096})"),
    ("cookie", r"\bCookie\(version=\d+, name=['\"][^'\"\n]{0,256}['\"], value=['\"](?P<v>[^'\"\n]{1,4096})"),
    # SMTP's login in a debug trace: ``AUTH PLAIN <base64 of \0user\0password>`` (not the server's
    # list of mechanisms, ``250-AUTH PLAIN LOGIN``), and AUTH LOGIN's
    # answer to the server's ``334 UGFzc3dvcmQ6`` ("Password:", base64) on the next ``send:``.
    ("authorization", r"\bAUTH (?:PLAIN|LOGIN|XOAUTH2) (?!(?:PLAIN|LOGIN|XOAUTH2|CRAM-MD5|DIGEST-MD5|GSSAPI|NTLM|OAUTHBEARER)\b)"
                      r"(?P<v>(?=[A-Za-z0-9+/=]{0,4096}[0-9+/=])[A-Za-z0-9+/=]{4,})"),
    ("authorization", r"UGFzc3dvcmQ6(?:[^\n]*\n){1,3}?[^\n]{0,40}?send: b?['\"](?P<v>[A-Za-z0-9+/=]{4,})"),
    # A CSV row of a key and its value (``db_password,X``, ``"db_password";"X"``, ``csv.writer``
    # of a config): a key
    # that ends on a credential's word (``pass_rate,0.87`` is a metric), a value with a digit or
    # a symbol and no number (a header's ``password,host`` names columns).
    ("key_value", rf"""(?im)^[^\S\n]*["']?{_ENDS_CREDENTIAL}["']?[,;][^\S\n]?["']?{_NOT_A_NUMBER}"""
                  r"""(?P<v>(?=[^\s,;"']{0,255}[0-9!@#$%^&*+=?~:/])[^\s,;"']{1,256})"""),
    # XML and HTML where an attribute names the secret: ``<entry key="db.password">X</entry>``,
    # ``<param name="password">X</param>``, ``<input type="password" value="X">``.
    ("key_value", rf"""(?i)<[\w:.-]{{1,100}}[^<>\n]{{0,200}}?\b(?:key|name|type|property)=["']{_ENDS_CREDENTIAL}"""
                  rf"""["'][^<>\n]{{0,200}}?\bvalue=["']{_NOT_A_NUMBER}(?P<v>[^"'\n]{{1,256}})"""),
    ("key_value", rf"""(?i)<[\w:.-]{{1,100}}[^<>\n]{{0,200}}?\b(?:key|name|property)=["']{_ENDS_CREDENTIAL}"""
                  rf"""["'][^<>\n]{{0,200}}?>{_NOT_A_NUMBER}(?P<v>[^<\n]{{1,256}})<"""),
    # A name element then its value element (Hadoop's ``<property><name>fs.s3a.secret.key</name>
    # <value>X</value>``).
    ("key_value", rf"""(?i)<name>\s*{_ENDS_CREDENTIAL}\s*</name>\s*<value>\s*{_NOT_A_NUMBER}(?P<v>[^<\s]{{1,256}})"""),
    # A dict's key that pydantic shortened in the middle (``'...word': 'X'`` in an error's
    # ``input_value``): which key it was is not known, its value goes.
    ("key_value", r"""(?<=\.\.\.)[\w.-]{0,100}["']\s*:\s*["'](?P<v>[^"'\n]{1,256})"""),
    # Percent-encoded (a form body, a URL inside a URL's parameter, once or twice): a URL's
    # password (``postgresql%3A%2F%2Fml%3AX%40db``) and a JSON string under a secret-looking key
    # (``%22password%22%3A+%22X%22``).
    ("url_credentials", r"(?i)%(?:25)?3A%(?:25)?2F%(?:25)?2F(?:(?!%(?:25)?(?:40|2F))[^\s&@/]){0,256}?%(?:25)?3A"
                        r"(?P<v>(?:(?!%(?:25)?40)[^\s&@/]){1,256})%(?:25)?40"),
    ("key_value", rf"(?i)%(?:25)?22[\w.-]{{0,100}}?(?:{SECRET_KEYWORDS}|{_TOKEN})[\w.-]{{0,100}}+%(?:25)?22(?:%(?:25)?3A|:)"
                  rf"(?:\+|%(?:25)?20)*%(?:25)?22(?P<v>(?:(?!%(?:25)?22)[^\s&]){{1,256}})"),
)

# Absolute POSIX paths of two components or more, and home-relative ones, wherever they start:
# after a space, a quote, "=" (``--data=/x/y``), ":" (each entry of ``PATH=/a/b:/c/d``, a
# ``host:/x/y`` copy target), or the empty host of a URI (``file:///x/y``, ``sqlite:////x/y``).
# A URL's own path is left alone: a path never starts at a slash that follows a word character
# or another slash (``//host/x``: the first slash has a slash after it, the second one before
# it), and a metric name (``train/loss``) does not start with a slash. A path also starts after a
# "." that follows a letter: wandb's key for a disk it watches (``x_stats_disk_paths``) is
# ``disk./mnt/x/y.usagePercent`` (after a digit it is arithmetic: ``1./n/m``). "=" may be inside
# a component: a partitioned data set's ``/data/site=icu/part-0/x.png``. (The lookahead first:
# most positions hold neither "/" nor "~", and fail there before any lookbehind is tried.)
# A directory's name may hold single blanks (``/data/patient P7126/scan.png``): a component
# with blanks counts only when a "/" follows it, so the words after a path's last component
# stay, and a word after a blank starts with a letter, a digit or "_" (``-L /usr/lib -lfoo``:
# the flag is no part of it); at most four blanks, so a line of many words and slashes costs
# no more than a few tries.
_COMPONENT = r"[^\s/\"'<>|:;,()\[\]{}]+"
_SEGMENT = rf"(?:{_COMPONENT}(?: [A-Za-z0-9_]{_COMPONENT[:-1]}*){{1,4}}(?=/)|{_COMPONENT})"
# A path also starts right after a compiler's ``-I`` or ``-L`` (``-I/home/alice/include``), after
# ``file://localhost``, and after an escape written out in a repr (``b'\x14/data/P7126/x.png'`` in
# a serialized ``tf.train.Example``, ``'\n/data/…'``); doubled slashes inside it do not end it
# (``/mnt/scratch//x/y``). A relative path (``../configs/train.yaml``) is none.
PATH_PATTERN = (rf"(?=[~/])(?:(?<![\w/.~-])|(?<=://)|(?<=:///)|(?<=[A-Za-z_]\.)|(?<=\s-[IL])|(?<=://localhost)"
                rf"|(?<=\\[nrtfvab0])|(?<=\\x[0-9a-fA-F]{{2}})|(?<=\\u[0-9a-fA-F]{{4}}))"
                # ``~user/...`` (a shell's home of another user) with two names below it at least:
                # ``~eps/1e-3`` in a comment is arithmetic.
                rf"(?:~[A-Za-z_][\w.-]{{0,31}}(?:/+{_SEGMENT}){{2,}}|(?:~|/{_SEGMENT})(?:/+{_SEGMENT})+)/*"
                # wandb 0.15 writes a watched disk's path into its stats keys with "\\" for "/"
                # (``disk.\\mnt\\vol.usageGB``).
                rf"|(?<=disk\.)(?:\\[^\s\\]{{1,255}}){{1,64}}?(?=\.usage(?:Percent|GB)\b)"
                # A user's home glued to what comes before it: a key built from a path
                # (``val//home/alice/ct.png``, ``loss_/home/…``, ``-o/home/…``, ``//home/…`` from
                # a root of "/"); not a URL's path (``https://home/x``, ``example.org/home/a/b``)
                # nor a relative one (``src/home/views/x``).
                rf"|(?:(?<=/)(?<!:/)|(?<=[_-])|(?<=-[A-Za-z])(?<![\w.-]-[A-Za-z]))"
                rf"(?=/(?:home|Users)/[^\s/]+/[^\s/])/{_SEGMENT}(?:/+{_SEGMENT})+/*"
                # The same path as wandb writes it into names, relative to the common root of
                # TensorBoard log dirs (``home/alice/runs/P7126/logs/train/x``: four names below
                # the home at least, not ``home/models/checkpoint/best``); with "/" made "_", see
                # ``LAST_TOKEN_RULES``.
                rf"|(?<![\w/.~-])(?:home|Users)/{_COMPONENT}(?:/+{_SEGMENT}){{3,}}/*")

# A command-line flag whose next argument is a secret (``--password X``, ``-p X`` is too vague).
SECRET_FLAG = re.compile(rf"(?i)^--?(?:[\w-]{{0,100}}(?:{SECRET_KEYWORDS}|{_TOKEN})[\w-]{{0,100}}+(?<!-stdin)|{_FLAG_WORDS})$")


# -- keys that name a credential --------------------------------------------------------------
# A key (config, summary, history, artifact metadata, a flag) is split into its words
# (``X-API-Key`` -> x, api, key; ``azureOpenaiKey`` -> azure, openai, key); the globs of the
# policy's ``config_keys`` are the site's own say, these words are always asked beside them.
_KEY_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# Words that name a credential: whatever stands under a key they end goes, a number too
# (``db_password``, ``smtp_pw``); inside a key they name something about one (``pw_loss``,
# ``password_reset_rate``, ``secret_sharing_parties``): text goes, a number stays.
CREDENTIAL_WORDS = frozenset({"password", "passwd", "passphrase", "passcode", "pwd", "pw", "secret", "secrets",
                              "credential", "credentials", "cred", "creds", "apikey", "privkey"})
# Words that name one when the value is text: a number under them is a count or a setting
# (``tokens``, ``auth_retries``, ``pass_rate``, ``pass@1``).
# ``pat``: a personal access token (``GITHUB_PAT``, ``hub.pat``).
TEXT_SECRET_WORDS = frozenset({"pass", "auth", "authorization", "bearer", "cookie", "cookies", "signature", "sig", "token",
                               "tokens", "pat"})

# A token that the word before names as a credential (``access_token``, ``HF_TOKEN``): no count,
# no vocabulary's column; the value under it goes whatever it is (``max_tokens``, ``pad_token``
# are other words).
CREDENTIAL_TOKEN_KINDS = frozenset({"access", "auth", "refresh", "bearer", "api", "hf", "hub", "huggingface", "github",
                                    "gh", "gitlab", "slack", "session", "oauth", "personal", "bot", "wandb",
                                    "registry", "npm", "pypi", "vault", "service"})
# A credential's word glued to the word before it (``PGPASSWORD``, ``dbpassword``).
_GLUED_CREDENTIAL_ENDS = ("password", "passwd", "passphrase", "secret")


@functools.lru_cache(maxsize=65536)
def key_secrecy(key: str) -> str:
    """What a key's name says of the value under it: ``"any"`` (it names a credential: the
    value goes whatever it is), ``"text"`` (a string under it goes, a number stays), ``""``."""
    words = [w.lower() for w in _KEY_WORD.findall(key)]
    if not words:
        return ""
    # The last word, past a number (``password_2``), or glued to a word before (``PGPASSWORD``,
    # ``dbpassword``).
    last = next((w for w in reversed(words) if not w.isdigit()), "")
    if last in CREDENTIAL_WORDS or last.endswith(_GLUED_CREDENTIAL_ENDS):
        return "any"
    if words[-1] == "token" and len(words) > 1 and words[-2] in CREDENTIAL_TOKEN_KINDS and words[0] != "use":
        return "any"   # (``use_auth_token: True`` is a switch)
    if words[-1] in ("key", "keys") and len(words) > 1 and words[-2] not in PLAIN_KEY_KINDS \
            and not (len(words) > 2 and words[-2].isdigit() and words[-3] + words[-2] in PLAIN_KEY_KINDS):  # s3_key
        return "any"
    if CREDENTIAL_WORDS.intersection(words):
        return "text"
    for i, w in enumerate(words):
        if w in TEXT_SECRET_WORDS and not (w in ("token", "tokens") and i and words[i - 1] in SPECIAL_TOKEN_KINDS):
            return "text"
    return ""


# The last word of a flag that takes a credential as its argument (``--basic-auth u:pw``,
# ``--bearer X``); ``--auth-type basic`` ends on another word, ``--no-auth`` takes none.
_AUTH_FLAG_WORDS = frozenset({"auth", "authorization", "bearer", "cookie", "cookies"})
# A config override given as a pair of arguments (yacs/detectron2's ``opts``:
# ``DATASETS.DB_PASSWORD X``, ``WANDB.API_KEY Y``): a dotted key, no dash.
_OVERRIDE_KEY = re.compile(r"[+~]{0,2}[A-Za-z_][\w-]{0,100}(?:\.[A-Za-z_][\w-]{0,100}){1,20}")


_TOKENIZER_WORDS = frozenset({"tokenizer", "tokenizers", "tokenization", "tokenize", "tokenized", "detokenize"})
# The special tokens' own names among SPECIAL_TOKEN_KINDS (``num_tokens``, ``max_new_tokens`` are counts).
_SPECIAL_TOKEN_NAMES = SPECIAL_TOKEN_KINDS - {"num", "max", "min", "new", "total"}


@functools.lru_cache(maxsize=65536)
def names_tokenizer_setting(key: str) -> bool:
    """A key that names a tokenizer or one of its special tokens (``tokenizer``,
    ``tokenizer_name``, ``pad_token``, ``eos_token``): text under it is a model's, no credential,
    though a glob ``*token*`` matches it."""
    if key_secrecy(key):
        return False
    words = [w.lower() for w in _KEY_WORD.findall(key)]
    return any(w in _TOKENIZER_WORDS or (w in ("token", "tokens") and i and words[i - 1] in _SPECIAL_TOKEN_NAMES)
               for i, w in enumerate(words))


def is_secret_flag(arg: str) -> bool:
    """A command-line flag whose next argument is a secret: ``--password``, ``--openai-key``,
    ``--db-pw``, ``--basic-auth``, a yacs override's key ``DB.PASSWORD``; not ``-p`` (too
    vague) nor ``--key-frames``."""
    if SECRET_FLAG.match(arg):
        return True
    if _OVERRIDE_KEY.fullmatch(arg):
        leaf = arg.rsplit(".", 1)[1]
        words = [w.lower() for w in _KEY_WORD.findall(leaf)]
        return key_secrecy(leaf) == "any" or (bool(words) and words[-1] in TEXT_SECRET_WORDS)
    if not arg.startswith("--") or "=" in arg:
        return False
    words = [w.lower() for w in _KEY_WORD.findall(arg[2:])]
    return key_secrecy(arg[2:]) == "any" or (bool(words) and words[-1] in _AUTH_FLAG_WORDS and words[0] != "no")

