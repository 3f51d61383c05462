"""The README's shell commands, and how the tests walk each one (tests/test_readme.py, tests/test_dvc_pipeline.py).

Every command of every ```bash block of README.md and of the models' README.md files must appear in :data:`WALK` with what the walk does with it:

- ``run``: run as written in a copy of the repository where the four systems were trained on the real mirror
  with tiny settings (tests/test_dvc_pipeline.py), with the substitutions listed (a free port for a fixed one, the
  first test image of that copy for the README's), inside the activated environment the README asks for;
- ``serve``: start it (a server), wait until it answers, run the command(s) that follow it in the README against
  it, then stop it;
- ``covered``: run for real by the named test;
- ``skip``: not run, with the reason (hours of training, files the mirror does not have).

A README command that is not in the table fails tests/test_readme.py, so a new command cannot go unwalked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def readmes() -> list[Path]:
    """The top README, then each catalogued model's notes in catalog order (their commands assume the top README's
    activation)."""
    from models.catalog import names

    return [README, *(REPO / "models" / m / "README.md" for m in names())]

# command prefix (as it starts in the README, comments excluded) -> (action, note)
WALK: dict[str, tuple[str, str]] = {
    "DATA_MIRROR=../shared/data make run": ("covered", "tests/test_dvc_pipeline.py runs dvc repro + the registry check on one stage per system (the whole pipeline takes hours)"),
    "DATA_MIRROR=../shared/data make test": ("covered", "this suite is what it runs (.ci/run runs it as written)"),
    "source .venv/bin/activate": ("run", "the walk runs every command with .venv/bin first on PATH, as activation does"),
    "dvc metrics show": ("run", ""),
    "dvc plots show": ("run", ""),
    "mlflow ui --backend-store-uri sqlite:///mlflow.db": ("serve", "with --port <free port>; probed on /"),
    "python -m flows.registry_check": ("run", "with the stages the copy trained (elsewhere: every train stage)"),
    "prefect server start &": ("covered", "tests/test_services.py: the stack starts it on 127.0.0.1, a free port"),
    "export PREFECT_API_URL=http://127.0.0.1:4200/api": ("covered", "tests/test_services.py (the stack's env)"),
    "prefect work-pool create gpu --type process --base-job-template services/gpu_pool_template.json": ("covered", "tests/test_services.py (the stack runs it)"),
    "make deploy": ("covered", "tests/test_services.py runs `prefect --no-prompt deploy --all`, the target's command"),
    "prefect worker start --pool gpu": ("covered", "tests/test_services.py: the stack's worker runs a deployment, stops on SIGTERM"),
    "make services": ("covered", "tests/test_services.py: services.stack.start on free ports, then stop (the targets' commands)"),
    "make services-stop": ("covered", "tests/test_services.py: services.stack.stop, nothing left running"),
    'eval "$(python -m services.stack env)"': ("covered", "tests/test_services.py (the exported variables)"),
    "make remote": ("covered", "tests/test_dvc_pipeline.py runs it as written against moto_server"),
    "make push": ("covered", "tests/test_dvc_pipeline.py runs it as written against moto_server"),
    "dvc pull": ("covered", "tests/test_dvc_pipeline.py on a fresh clone (the stages the copy trained), then dvc repro runs none"),
    "make serve MODEL=models:/melu@champion PORT=5001": ("serve", "PORT=<free port>"),
    "curl -s 127.0.0.1:5001/invocations": ("run", "against the server above"),
    "python -m flows.model seqrec --variant sasrec --set data.dataset=Yelp": (
        "skip", "trains SASRec on Yelp until early stopping: tens of minutes on 2 cores"),
    "dvc repro models/seqrec/dvc.yaml:train_seqrec@fanc-Beauty": ("run", ""),
    "make serve MODEL=models:/fanc@champion_beauty PORT=5002": ("serve", "PORT=<free port>"),
    "curl -s 127.0.0.1:5002/invocations": ("run", "against the server above"),
    "dvc repro models/dissan/dvc.yaml:train_dissan": ("run", "trains the two DisSAN stages the copy had not run, with the copy's tiny settings"),
    "python scripts/dissan_table.py --seeds 0 1 2": ("skip", "nine DisSAN trainings at full size: about 20 minutes"),
    "python scripts/dissan_benchmark.py": ("skip", "a benchmark at paper sizes: minutes of CPU time, results in docs/results.md"),
    "python -m data.stages.download --dataset snli_official": ("skip", "the SNLI train split is not in the mirror (official URL, no internet in CI)"),
    "python -m data.stages.download --dataset glove_840b_300d": ("skip", "GloVe 840B (2 GB) is not in the mirror"),
    "python -m flows.model dissan --set data.dataset=snli --set data.vectors=data/raw/glove_840b_300d/glove.840B.300d.zip": (
        "skip", "needs the two downloads above"),
    "make serve MODEL=models:/dissan@champion_sick PORT=5003": ("serve", "PORT=<free port>"),
    "curl -s 127.0.0.1:5003/invocations": ("run", "against the server above"),
    "python -m data.stages.preprocess_sgg --source vg150_h5": ("skip", "the VG150 h5 files are not in the mirror"),
    "python -m flows.model egtr --set dataset=vg150": ("skip", "needs the VG150 conversion above and GPU-days at paper sizes"),
    "dvc repro models/egtr/dvc.yaml:train_egtr@synthetic": ("run", "up to date in the copy (trained with tiny settings)"),
    "dvc repro models/egtr/dvc.yaml:train_egtr@vrd_sample": ("skip", "the VRD fit check: about 40 minutes"),
    "python scripts/egtr_benchmark.py": ("skip", "a benchmark at paper sizes (600 x 1000 images): minutes per image batch"),
    "python -m models.egtr.infer --model models:/egtr@champion_synthetic": ("run", "on the copy's first synthetic test image"),
}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(text: str | None = None) -> list[str]:
    """The commands of the README's bash blocks, as bash reads them: continuation lines and multi-line quotes
    joined, comment-only lines dropped."""
    text = "\n".join(p.read_text() for p in readmes()) if text is None else text
    out = []
    for block in bash_blocks(text):
        buf = ""
        for line in block.splitlines():
            if not buf and (not line.strip() or line.strip().startswith("#")):
                continue
            buf = f"{buf}\n{line}" if buf else line
            if buf.endswith("\\"):
                continue
            try:
                shlex.split(buf, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            out.append(buf)
            buf = ""
        assert not buf, f"README.md: unterminated command {buf!r}"
    return out


def words(command: str) -> str:
    """The command without its comment, whitespace normalised (continuations joined)."""
    return " ".join(shlex.split(command.replace("\\\n", " "), comments=True, posix=False))


def classify(command: str) -> tuple[str, str, str]:
    """(prefix, action, note) of the longest WALK prefix that the command starts with."""
    w = words(command)
    hits = [p for p in WALK if w.startswith(p)]
    if not hits:
        raise KeyError(f"README command not in tests/readme_walk.py WALK: {w!r}")
    p = max(hits, key=len)
    return (p, *WALK[p])
