"""The wheel holds the recipes: built from this checkout, installed in a fresh virtual
environment and run outside the checkout, ``dmrnet fit --config mfeat_dmrnet`` trains."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_install_runs_a_shipped_recipe_by_name_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True)
    wheel = next(wheels.glob("dmrnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dmrnet/configs/mfeat_dmrnet.yaml" in names
    assert "dmrnet/configs/smoke/manifest.yaml" in names
    assert "dmrnet = dmrnet.launch:main" in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    # the dependencies (torch 2.13 first, then the rest) are this environment's: a line in a
    # .pth file puts its site-packages after the new environment's own, so dmrnet itself comes
    # from the wheel (not the checkout) while nothing is downloaded or installed twice
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                          "['purelib'])"], check=True, capture_output=True, text=True)
    deps = [p for p in [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
            if Path(p).is_dir()]
    Path(own.stdout.strip(), "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-compile", "--target", own.stdout.strip(), str(wheel)], check=True,
                   capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", "import dmrnet; print(dmrnet.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True)
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout
    done = subprocess.run([str(python), "-m", "dmrnet.cli", "fit", "--config", "mfeat_dmrnet",
                           "--trainer.max_epochs", "1", "--trainer.default_root_dir", "run"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((work / "run").rglob("*.ckpt"))
