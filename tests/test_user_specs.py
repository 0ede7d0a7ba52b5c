"""The user's own models by spec: ``MODULE:FUNCTION``, ``file:`` and ``torchvision:``/``timm:`` with options.

A factory in a temporary module (put on ``sys.path``) builds a grayscale model; ``load_model`` and the CLI
take its normalisation, channel count, input size and keyword arguments, record them on the network
(``net.spec``, ``net.load_args``) so that they reload the same model, and every way of getting the spec
wrong is a one-line user error naming the cause and the fix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from diversevis import DiversevisError, ModelNotFoundError, Network, load_model
from diversevis.cli import main
from diversevis.models.user import parse_floats, parse_input_size, parse_model_arg, parse_model_args

MODULE = '''
import torch
from torch import nn

import diversevis as dv


def build(width=4, bias=True):
    """A grayscale conv net: 1 channel in, 2 out."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, bias=bias), nn.ReLU(), nn.Conv2d(width, 2, 3))


def wrapped():
    return dv.Network(build(), mean=[0.5], std=[0.25], in_channels=1, input_size=32, name="mine")


def readout(n=3):
    """A readout that only runs on 36x64 inputs: (B, 1, 36, 64) -> (B, n)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 5), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 32 * 60, n))


def boom(**kw):
    raise ValueError("no weights\\nfor this one")


def weights():
    return build().state_dict()


def nothing():
    model = build()


MODEL = build()
NOT_A_MODEL = 3
'''


@pytest.fixture
def mymod(tmp_path, monkeypatch):
    """``mymod`` (see :data:`MODULE`) importable from a temporary folder; forgotten afterwards."""
    (tmp_path / "mymod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mymod", raising=False)
    yield tmp_path
    sys.modules.pop("mymod", None)


@pytest.fixture
def own_sys_path(monkeypatch):
    """A copy of ``sys.path`` that the test may change (the loader appends the cwd to it)."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def user_error(capsys, *argv: str) -> str:
    """Run a command that must fail as a user error; return its one-line message."""
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (out, err)
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diversevis: error: ")
    return lines[0]


# ---------------------------------------------------------------------- MODULE:FUNCTION
def test_factory_builds_a_grayscale_model_with_its_normalisation(mymod):
    net = load_model("mymod:build", in_channels=1, mean=0.5, std=0.25)
    assert isinstance(net, Network)
    assert (net.spec, net.name, net.in_channels, net.input_size) == ("mymod:build", "mymod:build", 1, 224)
    assert net.load_args == {
        "mean": [0.5],
        "std": [0.25],
        "in_channels": 1,
        "input_size": 224,
        "model_args": {},
    }
    import mymod as m

    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(net(x), m.build()((x - 0.5) / 0.25))


def test_channels_come_from_the_first_convolution_and_one_value_is_broadcast(mymod):
    net = load_model("mymod:build", mean="0.5", std=[0.25])
    assert net.in_channels == 1 and net.load_args["mean"] == [0.5]
    three = load_model("mymod:build", mean=0.5, in_channels=3)  # the caller's word wins (and is wrong)
    assert three.load_args["mean"] == [0.5, 0.5, 0.5] and three.load_args["std"] == [1.0, 1.0, 1.0]
    with pytest.raises(DiversevisError, match="mean has 2 values but the model takes 1 input channel"):
        load_model("mymod:build", mean="0.5,0.4", in_channels=1)


def test_load_args_reload_the_same_model(mymod):
    net = load_model("mymod:build", mean=0.5, std=0.25, input_size=40, model_args={"width": 3, "bias": False})
    assert net.load_args["model_args"] == {"width": 3, "bias": False}
    again = load_model(net.spec, **net.load_args)
    assert again.load_args == net.load_args and again.spec == net.spec
    assert again.input_size == 40 and again.module[0].bias is None and again.module[0].out_channels == 3
    x = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))
    assert json.loads(json.dumps(net.load_args)) == net.load_args  # fits in a run spec as it is


def test_non_square_input_size(mymod):
    net = load_model("mymod:readout", input_size="36,64", mean=0.5, std=0.2)
    assert net.input_size == (36, 64) and net.load_args["input_size"] == [36, 64]
    rows = {r.name: r.shape for r in net.list_layers()}
    assert rows["0"] == (2, 32, 60) and rows["3"] == (3,)
    assert load_model(net.spec, **net.load_args).input_size == (36, 64)
    assert load_model("mymod:build", input_size=(30, 30)).load_args["input_size"] == 30  # square: a side


def test_factory_returning_a_network_keeps_its_settings_unless_overridden(mymod):
    net = load_model("mymod:wrapped")
    assert (net.name, net.spec, net.in_channels, net.input_size) == ("mine", "mymod:wrapped", 1, 32)
    assert net.load_args["mean"] == [0.5] and net.load_args["std"] == [0.25]
    other = load_model("mymod:wrapped", std=0.5, input_size=20)
    assert other.load_args["mean"] == [0.5] and other.load_args["std"] == [0.5] and other.input_size == 20


def test_a_model_object_is_used_as_it_is_and_left_unchanged(mymod):
    import mymod as m

    assert m.MODEL.training and all(p.requires_grad for p in m.MODEL.parameters())
    net = load_model("mymod:MODEL", mean=0.5)
    assert net.module is m.MODEL
    assert m.MODEL.training and all(p.requires_grad for p in m.MODEL.parameters())  # not frozen: the user's
    with pytest.raises(DiversevisError, match="is a model object, not a function"):
        load_model("mymod:MODEL", model_args={"width": 2})


def test_the_current_directory_is_searched_after_sys_path(tmp_path, monkeypatch, own_sys_path):
    (tmp_path / "cwdmod.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    sys.path[:] = [p for p in sys.path if p not in ("", os.curdir, str(tmp_path))]
    monkeypatch.delitem(sys.modules, "cwdmod", raising=False)
    try:
        assert load_model("cwdmod:build").in_channels == 1
    finally:
        sys.modules.pop("cwdmod", None)


def test_module_not_found_names_it_and_the_fix(mymod, own_sys_path):
    with pytest.raises(ModelNotFoundError) as exc:
        load_model("no_such_mod_xyz:build")
    msg = str(exc.value)
    assert "cannot import module 'no_such_mod_xyz'" in msg and "PYTHONPATH" in msg
    with pytest.raises(ModelNotFoundError, match="Did you mean: torchvision"):
        load_model("torchvison:resnet18")
    with pytest.raises(ModelNotFoundError, match="name the module, not its file: mymod:build"):
        load_model("mymod.py:build")


def test_errors_inside_the_module_are_reported_as_such(tmp_path, monkeypatch, own_sys_path):
    (tmp_path / "needsdep.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "broken.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("needsdep", "broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(DiversevisError, match="it imports 'no_such_dependency_xyz', which is not installed"):
        load_model("needsdep:build")
    with pytest.raises(DiversevisError, match="importing 'broken' .* raised SyntaxError"):
        load_model("broken:build")


def test_unknown_attribute_suggests_the_module_callables(mymod):
    with pytest.raises(ModelNotFoundError, match="'mymod' has no attribute 'bild'.*Did you mean: build"):
        load_model("mymod:bild")
    with pytest.raises(ModelNotFoundError, match="It defines: .*boom, build"):
        load_model("mymod:qqqqqqqq")


@pytest.mark.parametrize(
    "spec, args, match",
    [
        ("mymod:boom", {}, r"the model factory mymod:boom\(\) raised ValueError: no weights for this one"),
        ("mymod:build", {"depth": 3}, r"cannot call mymod:build\(depth=3\).*it takes \(width=4, bias=True\)"),
        ("mymod:weights", {}, r"returned a state_dict .*not an nn.Module or dv.Network; build the model"),
        ("mymod:nothing", {}, r"returned None, not an nn.Module.*return model"),
        ("mymod:NOT_A_MODEL", {}, r"mymod:NOT_A_MODEL is an int, not a function that builds a model"),
    ],
)
def test_factory_errors(mymod, spec, args, match):
    with pytest.raises(DiversevisError, match=match) as exc:
        load_model(spec, model_args=args)
    assert "\n" not in str(exc.value)


def test_zoo_models_take_no_input_options():
    with pytest.raises(DiversevisError, match="apply to your own models"):
        load_model("cell:complex", mean=0.5)
    with pytest.raises(DiversevisError, match="apply to your own models"):
        load_model("cell:complex", model_args={"x": 1})
    assert load_model("cell:complex").load_args == {}


# ------------------------------------------------------------------------------ file:
def test_file_spec_takes_the_options(tmp_path):
    path = tmp_path / "gray.pt"
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), path)
    net = load_model(f"file:{path}", allow_pickle=True, mean=0.5, std=0.25, input_size="20,30")
    assert net.in_channels == 1 and net.input_size == (20, 30)
    assert net.load_args == {
        "mean": [0.5],
        "std": [0.25],
        "in_channels": 1,
        "input_size": [20, 30],
        "model_args": {},
    }
    again = load_model(net.spec, allow_pickle=True, **net.load_args)
    assert again.load_args == net.load_args
    with pytest.raises(DiversevisError, match="model_args"):
        load_model(f"file:{path}", allow_pickle=True, model_args={"width": 2})


def test_pickled_class_that_cannot_be_imported_says_how_to_fix_it(tmp_path, monkeypatch, own_sys_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pickmod.py").write_text(MODULE + "\n\nclass Net(nn.Sequential):\n    pass\n")
    monkeypatch.syspath_prepend(str(src))
    import pickmod

    path = tmp_path / "net.pt"
    torch.save(pickmod.Net(nn.Conv2d(3, 2, 3)), path)
    del sys.modules["pickmod"]
    sys.path.remove(str(src))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DiversevisError) as exc:
        load_model(f"file:{path}", allow_pickle=True)
    msg = str(exc.value)
    assert "module 'pickmod', which is not importable" in msg and "PYTHONPATH" in msg
    assert "--model pickmod:FUNCTION" in msg
    with pytest.raises(DiversevisError, match=r"\(a pickmod.Net\).*not loaded.*--allow-pickle"):
        load_model(f"file:{path}")
    monkeypatch.chdir(src)  # run from the folder that holds the class: found there
    try:
        assert load_model(f"file:{path}", allow_pickle=True).in_channels == 3
    finally:
        sys.modules.pop("pickmod", None)


def test_pickled_class_from_a_script_or_gone_from_its_module(tmp_path, monkeypatch, own_sys_path):
    ghost = type("GhostNet", (nn.Sequential,), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "GhostNet", ghost, raising=False)
    torch.save(ghost(nn.Conv2d(3, 2, 3)), tmp_path / "script.pt")
    monkeypatch.delattr(sys.modules["__main__"], "GhostNet")
    with pytest.raises(
        DiversevisError, match="class GhostNet was defined in the script that saved it"
    ) as exc:
        load_model(f"file:{tmp_path / 'script.pt'}", allow_pickle=True)
    assert "state_dict" in str(exc.value) and "--model my_module:build" in str(exc.value)

    (tmp_path / "movedmod.py").write_text("from torch import nn\n\nclass Net(nn.Sequential):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "movedmod", raising=False)
    import movedmod

    torch.save(movedmod.Net(nn.Conv2d(3, 2, 3)), tmp_path / "moved.pt")
    del movedmod.Net
    try:
        with pytest.raises(DiversevisError, match="pickled movedmod.Net, but module 'movedmod' has no 'Net'"):
            load_model(f"file:{tmp_path / 'moved.pt'}", allow_pickle=True)
    finally:
        sys.modules.pop("movedmod", None)


# ----------------------------------------------------------------- torchvision: and timm:
@pytest.mark.parametrize(
    "package, spec, hint",
    [
        ("torchvision", "torchvision:resnet18", "diversevis[torchvision]"),
        ("timm", "timm:resnet18", "pip install timm"),
    ],
)
def test_missing_package_names_the_install_command(capsys, monkeypatch, package, spec, hint):
    monkeypatch.setitem(sys.modules, package, None)  # import -> ImportError, installed or not
    with pytest.raises(ModelNotFoundError, match=f"{spec} needs {package}") as exc:
        load_model(spec)
    assert hint in str(exc.value)
    msg = user_error(capsys, "layers", "--model", spec, "--model-arg", "pretrained=False")
    assert hint in msg


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_missing_package_for_real(package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ModelNotFoundError, match=f"needs {package}, which is not importable"):
        load_model(f"{package}:resnet18")


def test_torchvision_random_weights_and_offline_message(monkeypatch, tmp_path):
    pytest.importorskip("torchvision")
    import urllib.error

    net = load_model("torchvision:resnet18", model_args={"pretrained": False})
    assert net.name == "torchvision:resnet18" and net.load_args["model_args"] == {"pretrained": False}
    assert net.load_args["mean"] == pytest.approx([0.485, 0.456, 0.406])
    with pytest.raises(DiversevisError, match="pretrained must be True or False"):
        load_model("torchvision:resnet18", model_args={"pretrained": "no"})

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelNotFoundError) as exc:
        load_model("torchvision:resnet18")
    msg = str(exc.value)
    assert "could not get the pretrained weights of torchvision:resnet18" in msg and str(tmp_path) in msg
    assert "torchvision:resnet18@/path/to/weights.pth" in msg and "--model-arg pretrained=False" in msg


def test_timm_random_weights_and_offline_message(monkeypatch, tmp_path):
    pytest.importorskip("timm")
    constants = pytest.importorskip("huggingface_hub.constants")
    net = load_model("timm:resnet18", model_args={"pretrained": False})
    assert net.name == "timm:resnet18" and net.load_args["model_args"] == {"pretrained": False}
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(DiversevisError, match="pretrained=False"):
        load_model("timm:resnet18")


def fake_torchvision() -> types.ModuleType:
    """A stand-in for torchvision's model API (its weights come through the real torch hub)."""
    url = "https://download.pytorch.org/models/tinynet-0123abcd.pth"

    def get_model(name, weights=None, width=2):
        model = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU())
        if weights is not None:
            model.load_state_dict(torch.hub.load_state_dict_from_url(url))
        return model

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(
        list_models=lambda: ["tinynet", "resnet18"],
        get_model=get_model,
        get_model_weights=lambda name: types.SimpleNamespace(DEFAULT=types.SimpleNamespace(url=url)),
    )
    return tv


def test_torchvision_path_with_a_stand_in_package(monkeypatch, tmp_path):
    import urllib.error

    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision())
    net = load_model("torchvision:tinynet", model_args={"pretrained": False, "width": 3})
    assert (net.spec, net.name, net.in_channels) == ("torchvision:tinynet", "torchvision:tinynet", 3)
    assert net.load_args["mean"] == [0.485, 0.456, 0.406] and net.load_args["std"] == [0.229, 0.224, 0.225]
    assert net.module[0].out_channels == 3 and not net.module.training  # built here: ours, frozen
    assert load_model(net.spec, **net.load_args).load_args == net.load_args
    with pytest.raises(
        ModelNotFoundError, match="torchvision has no model 'tinynet2'.*Did you mean: tinynet"
    ):
        load_model("torchvision:tinynet2")
    with pytest.raises(DiversevisError, match="pretrained must be True or False, got 'no'"):
        load_model("torchvision:tinynet", model_args={"pretrained": "no"})
    with pytest.raises(
        DiversevisError, match="torchvision could not build tinynet .*TypeError.*pretrained=False"
    ):
        load_model("torchvision:tinynet", model_args={"depth": 3})

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelNotFoundError) as exc:
        load_model("torchvision:tinynet")
    msg = str(exc.value)
    assert "could not get the pretrained weights of torchvision:tinynet (URLError" in msg
    assert f"{tmp_path}/checkpoints/tinynet-0123abcd.pth" in msg
    assert "torchvision:tinynet@/path/to/weights.pth" in msg and "--model-arg pretrained=False" in msg
    ckpt = tmp_path / "w.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).state_dict(), ckpt)
    assert load_model(f"torchvision:tinynet@{ckpt}").spec == f"torchvision:tinynet@{ckpt}"


def test_timm_path_with_a_stand_in_package(monkeypatch):
    def create_model(name, pretrained=False, in_chans=3, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        model = nn.Sequential(nn.Conv2d(in_chans, 2, 3))
        model.pretrained_cfg = {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.2, 0.2), "input_size": (3, 36, 64)}
        return model

    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name == "tiny"
    timm.list_models = lambda: ["tiny", "huge"]
    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    net = load_model("timm:tiny", model_args={"pretrained": False, "in_chans": 1})
    assert net.input_size == (36, 64) and net.in_channels == 1  # from the model's pretrained config
    assert net.load_args["mean"] == [pytest.approx(0.5)] and net.load_args["std"] == [pytest.approx(0.2)]
    with pytest.raises(
        ModelNotFoundError, match="could not get the pretrained weights of timm:tiny.*pretrained=False"
    ):
        load_model("timm:tiny")
    with pytest.raises(ModelNotFoundError, match="timm has no model 'tinny'. Did you mean: tiny"):
        load_model("timm:tinny")


# ------------------------------------------------------------------------------ CLI
GRAY = ["--model", "mymod:build", "--in-channels", "1", "--mean", "0.5", "--std", "0.25"]


def test_cli_layers_of_a_factory_model(capsys, mymod):
    rc, out, err = run(capsys, "layers", *GRAY, "--size", "12")
    assert rc == 0 and err == ""
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [
        ["0", "Conv2d", "4x10x10", "3", "1"],
        ["1", "ReLU", "4x10x10", "3", "1"],
        ["2", "Conv2d", "2x8x8", "5", "1"],
    ]
    rc, out, _ = run(capsys, "layers", "--model", "mymod:build", "--model-arg", "width=3", "--size", "12")
    assert rc == 0 and "3x10x10" in out
    rc, out, _ = run(capsys, "layers", "--model", "mymod:build", "--size", "12,20")
    assert rc == 0 and "2x8x16" in out


def test_cli_layers_of_a_non_square_readout(capsys, mymod):
    rc, out, err = run(capsys, "layers", "--model", "mymod:readout", "--input-size", "36,64")
    assert rc == 0 and err == ""
    assert "2x32x60" in out and any(line.split()[:3] == ["3", "Linear", "3"] for line in out.splitlines())


def test_cli_diverse_records_the_model_spec(capsys, mymod, tmp_path):
    out_dir = tmp_path / "run"
    rc, out, err = run(
        capsys, "diverse", *GRAY, "--layer", "2", "--unit", "0", "--images", "2", "--max-iter", "5",
        "--mei-restarts", "1", "--norm", "1", "--quiet", "--out", str(out_dir),
    )  # fmt: skip
    assert rc == 0, err
    spec = json.loads((out_dir / "result.json").read_text())["spec"]
    assert spec["model"] == "mymod:build"
    # the run spec holds what reloads the same model: spec string and load arguments
    assert spec["model_spec"] == "mymod:build"
    again = load_model(spec["model_spec"], **spec["model_load_args"])
    assert (again.in_channels, list(again.mean.flatten())) == (1, spec["model_load_args"]["mean"])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "no_such_mod_xyz:build"], "cannot import module 'no_such_mod_xyz'"),
        (["--model", "mymod:bild"], "Did you mean: build"),
        (["--model", "mymod:boom"], "raised ValueError: no weights for this one"),
        (["--model", "mymod:weights"], "returned a state_dict"),
        (["--model", "mymod:build", "--model-arg", "depth=3"], "cannot call mymod:build(depth=3)"),
        (["--model", "mymod:build", "--model-arg", "width"], "--model-arg takes KEY=VALUE"),
        (["--model", "mymod:build", "--model-arg", "2w=3"], "not a Python keyword-argument name"),
        (["--model", "mymod:build", "--model-arg", "w=1", "--model-arg", "w=2"], "given twice"),
        (["--model", "mymod:build", "--mean", "0.5,x"], "mean takes comma-separated numbers"),
        (["--model", "mymod:build", "--std", "nan"], "std values must be finite"),
        (["--model", "mymod:build", "--std", "0"], "std must be positive"),
        (["--model", "mymod:build", "--input-size", "36,x"], "--input-size) takes a side or HEIGHT,WIDTH"),
        (["--model", "cell:complex", "--mean", "0.5"], "apply to your own models"),
    ],
)
def test_cli_user_errors_are_one_line(capsys, mymod, own_sys_path, argv, match):
    assert match in user_error(capsys, "layers", *argv)


# ------------------------------------------------------------------------------ parsers
KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
LITERALS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@given(key=KEYS, value=LITERALS)
def test_model_arg_literals_round_trip(key, value):
    assert parse_model_arg(f"{key}={value!r}") == (key, value)
    assert parse_model_args([f"{key}={value!r}", f"other_{key}=x"]) == {key: value, f"other_{key}": "x"}


@given(key=KEYS, word=st.from_regex(r"[a-z][a-z0-9_./-]{0,12}", fullmatch=True))
def test_model_arg_non_literals_stay_strings(key, word):
    assert parse_model_arg(f"{key}={word}") == (key, word)


@given(text=st.text(max_size=20))
def test_model_arg_without_a_valid_key_is_a_user_error(text):
    key = text.partition("=")[0].strip()
    if "=" in text and key.isidentifier():
        assert parse_model_arg(text)[0] == key
    else:
        with pytest.raises(DiversevisError):
            parse_model_arg(text)


FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(values=st.lists(FINITE, min_size=1, max_size=6), sep=st.sampled_from([",", ", ", " ,"]))
def test_mean_std_lists_parse(values, sep):
    assert parse_floats(sep.join(repr(v) for v in values), "mean") == tuple(values)
    assert parse_floats(values, "std") == tuple(values)


@given(
    values=st.lists(FINITE, min_size=0, max_size=4),
    bad=st.sampled_from(["", "x", "nan", "inf", "-inf", "1..2", "0.5 0.5", "[1]", "True"]),
    where=st.integers(0, 4),
)
def test_mean_std_with_a_bad_value_is_a_user_error(values, bad, where):
    parts = [repr(v) for v in values]
    parts.insert(min(where, len(parts)), bad)
    with pytest.raises(DiversevisError):
        parse_floats(",".join(parts), "mean")


@given(h=st.integers(1, 5000), w=st.integers(1, 5000))
def test_input_sizes_parse(h, w):
    expected = h if h == w else (h, w)
    assert (
        parse_input_size(f"{h},{w}") == parse_input_size(f"{h}x{w}") == parse_input_size((h, w)) == expected
    )
    assert parse_input_size(str(h)) == h


@pytest.mark.parametrize("bad", ["", "0", "-3", "3,4,5", "a", "3.5", "3,", True, 2.0, (0, 3), None])
def test_bad_input_sizes_are_user_errors(bad):
    with pytest.raises(DiversevisError):
        parse_input_size(bad)
