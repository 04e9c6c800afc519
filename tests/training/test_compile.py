"""Regional torch.compile (issue 20): the tiny stage-1 model's video blocks and text layers
compile with `fullgraph=True` (no graph break: a break is an error), and the compiled model's
loss and gradients equal eager's within rounding. CPU, backend "aot_eager": Dynamo's tracing and
AOTAutograd (the part that decides graph breaks and runs the custom ops' fake implementations)
without Inductor's C++ build."""

from __future__ import annotations

import pathlib

import torch

from lfvila.config import load_config
from lfvila.model import build_model
from lfvila.training.compile import compile_blocks, compile_enabled

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _loss(model, cfg, seed=0):
    v, t = cfg.model.video, cfg.model.text
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(2, 3, v.num_frames, *v.input_size, generator=gen)
    ids = torch.randint(1000, 2000, (2, t.max_sentences, t.max_tokens), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, -1, 3:] = 0
    out = model(video, ids, mask, mtc_generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_video_blocks_and_text_layers_compile_without_graph_breaks():
    torch._dynamo.reset()
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        ["model.video.drop_path_rate=0.0", "model.text.hidden_dropout_prob=0.0",
         "model.text.attention_probs_dropout_prob=0.0"],
    )  # fmt: skip
    torch.manual_seed(0)
    eager = build_model(cfg).train()
    torch.manual_seed(0)
    compiled = build_model(cfg).train()
    counts = compile_blocks(compiled, backend="aot_eager", fullgraph=True)
    assert counts == {"video": sum(cfg.model.video.depths), "text": cfg.model.text.stage1_layers}
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names unchanged
    loss_e, grads_e = _loss(eager, cfg)
    loss_c, grads_c = _loss(compiled, cfg)  # a graph break would raise here (fullgraph)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)


def test_compile_setting():
    assert compile_enabled(None, torch.device("cuda")) and not compile_enabled(
        None, torch.device("cpu")
    )
    assert compile_enabled(True, torch.device("cpu")) and not compile_enabled(
        False, torch.device("cuda")
    )


def test_fused_attention_stays_one_op_inside_compiled_blocks():
    """With the Triton backend (the interpreter here) the window-attention custom ops sit inside
    the compiled video blocks without a graph break; the result equals eager's."""
    from lfvila.model.video_swin import VideoEncoder

    torch._dynamo.reset()
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        ["model.video.drop_path_rate=0.0", "model.video.attention_backend=triton",
         "model.video.num_frames=4", "model.video.num_clips=2", "model.video.embed_dim=32",
         "model.video.depths=[2,1,1,1,1,1]"],
    ).model.video  # fmt: skip
    torch.manual_seed(0)
    eager = VideoEncoder(cfg).train()
    torch.manual_seed(0)
    compiled = VideoEncoder(cfg).train()
    assert compile_blocks(compiled, backend="aot_eager", fullgraph=True)["video"] == 7
    video = torch.randn(
        1, 3, cfg.num_frames, *cfg.input_size, generator=torch.Generator().manual_seed(0)
    )
    outs = []
    for model in (eager, compiled):
        out = model(video, with_local=False).final
        out.square().mean().backward()
        outs.append(
            (out.detach(), model.layers[0].blocks[1].attn.relative_position_bias_table.grad)
        )
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-7)


def test_pretrain_compiles_the_blocks_when_asked(tiny_config, tmp_path, monkeypatch):
    """`train.compile=true`: `lfvila pretrain` compiles the engine's module's blocks in place
    before the first step (aot_eager here: Inductor's CPU build is what `null` avoids)."""
    from lfvila.cli import main
    from lfvila.training import compile as regional

    seen = []
    real = regional.compile_blocks

    def spy(model, **kwargs):
        seen.append(model)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(regional, "compile_blocks", spy)
    torch._dynamo.reset()
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(tiny_config), "--output-dir", str(out), "train.max_steps=2",
            "train.compile=true", "data.val=null", "data.val_retrieval=null",
            "eval.before_training=false"]  # fmt: skip
    assert main(args) == 0
    assert (
        len(seen) == 1
        and "torch.compile: 6 video blocks and 3 text layers" in (out / "log.txt").read_text()
    )
