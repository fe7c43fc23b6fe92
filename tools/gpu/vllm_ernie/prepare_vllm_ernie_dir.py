#!/usr/bin/env python3
"""Makes an ERNIE-4.5-VL directory that vLLM 0.26 loads: a copy of SRC's small files with
ocrvl_ernie_shim.py beside them and `auto_map` pointing at its classes (see that file for why),
and SRC's weight files linked, not copied.

    python3 prepare_vllm_ernie_dir.py SRC DST

SRC is a directory `synth-model --arch ernie-4.5-vl-28b-a3b` wrote (with `--config-only` its
weights are absent: run vLLM on DST with load_format="dummy"). Weights are linked only when
their names are the hub's (a directory transformers saved keeps the vision tower under
`model.vision_model.`, which vLLM's loader does not map).
"""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = "ocrvl_ernie_shim"
AUTO_MAP = {"AutoConfig": f"{SHIM}.ErnieVLShimConfig", "AutoProcessor": f"{SHIM}.ErnieVLShimProcessor"}


def main(src, dst):
    os.makedirs(dst, exist_ok=True)
    linked = 0
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.lexists(d):
            os.remove(d)
        if name.endswith(".safetensors") or name == "model.safetensors.index.json":
            os.symlink(os.path.abspath(s), d)
            linked += 1
        elif os.path.isfile(s):
            shutil.copy(s, d)
    shutil.copy(os.path.join(HERE, f"{SHIM}.py"), os.path.join(dst, f"{SHIM}.py"))

    path = os.path.join(dst, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    if "text_config" in cfg:
        raise SystemExit(f"{src}: a nested (transformers-native) config; give a hub-form directory "
                         "(synth-model --arch ernie-4.5-vl-28b-a3b [--config-only])")
    cfg["auto_map"] = AUTO_MAP
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)

    path = os.path.join(dst, "preprocessor_config.json")
    with open(path) as f:
        pre = json.load(f)
    pre.pop("processor_class", None)
    pre["auto_map"] = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}
    with open(path, "w") as f:
        json.dump(pre, f, indent=2)
    print(f"{dst}: shim config and processor; {linked} weight files linked"
          + ("" if linked else " (none: use load_format='dummy')"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
