"""Wiring tests: every method's training loss on a fixed batch equals the configured combination of
the pure losses, with the configured weights, temperature, schedule switches and buffers. The
parameters are deliberately not the defaults, so a method that ignores one fails."""
import copy

import pytest
import torch
import torch.nn.functional as F

from taildistill import losses as L
from taildistill.data import make_groups
from taildistill.data.dataset import DataInfo
from taildistill.methods import build_method
from taildistill.models import build_model

COUNTS = [60, 40, 25, 16, 10, 7, 5, 4, 3, 2]
C = len(COUNTS)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    info = DataInfo(C, COUNTS, make_groups("shots", COUNTS), [str(i) for i in range(C)], (1, 8, 8))
    student = build_model("convnet_small", C, 1, 8, width=6).eval()
    teacher = build_model("convnet_small", C, 1, 8, width=10).eval()
    x = torch.randn(12, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    with torch.no_grad():
        s, t = student(x)["logits"], teacher(x)["logits"]
    return info, student, teacher, {"x": x, "y": y}, s, t


def make(name, params, setup, student=None, teacher=None):
    info, s_model, t_model, *_ = setup
    m = build_method(name, params, copy.deepcopy(student or s_model), teacher or t_model, info)
    return m.eval()


def terms(method, batch, epoch=0):
    with torch.no_grad():
        return {k: v.item() for k, v in method(batch, epoch).terms.items()}


def approx(v):
    return pytest.approx(v, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------- supervised


@pytest.mark.parametrize("params,expected", [
    ({"sup_loss": "ce", "label_smoothing": 0.2}, lambda s, y: F.cross_entropy(s, y, label_smoothing=0.2)),
    ({"sup_loss": "focal", "focal_gamma": 2.0}, lambda s, y: L.focal_loss(s, y, 2.0)),
    ({"sup_loss": "cb", "cb_beta": 0.99}, lambda s, y: F.cross_entropy(s, y, weight=L.class_balanced_weights(COUNTS, 0.99))),
    ({"sup_loss": "cb_focal", "cb_beta": 0.99, "focal_gamma": 0.5},
     lambda s, y: L.focal_loss(s, y, 0.5, L.class_balanced_weights(COUNTS, 0.99))),
    ({"sup_loss": "la", "la_tau": 1.5}, lambda s, y: L.logit_adjusted_loss(s, y, torch.tensor(COUNTS) / sum(COUNTS), 1.5)),
    ({"sup_loss": "bsce"}, lambda s, y: L.balanced_softmax_loss(s, y, COUNTS)),
    ({"sup_loss": "vs", "vs_gamma": 0.2, "vs_tau": 1.2},
     lambda s, y: L.vs_loss(s, y, L.vs_scales(COUNTS, 0.2), torch.tensor(COUNTS) / sum(COUNTS), 1.2)),
    ({"sup_loss": "lade", "lade_alpha": 0.3, "lade_lambda": 0.05},
     lambda s, y: L.lade_loss(s, y, torch.tensor(COUNTS) / sum(COUNTS), 0.3, 0.05)),
])
def test_supervised_losses(setup, params, expected):
    *_, batch, s, t = setup
    m = make("ce", {**params, "sup_weight": 0.7}, setup)
    assert terms(m, batch) == {"sup": approx(0.7 * expected(s, batch["y"]).item())}


def test_ldam_on_a_cosine_head(setup):
    *_, batch, s, t = setup
    student = build_model("resnet20", C, 1, 8, cosine_head=True, cosine_scale=10.0).eval()
    m = make("ce", {"sup_loss": "ldam", "ldam_max_margin": 0.3, "ldam_scale": 10.0}, setup, student=student)
    with torch.no_grad():
        z = student(batch["x"])["logits"]  # 10 * cos
    expect = F.cross_entropy(z - 10.0 * F.one_hot(batch["y"], C) * L.ldam_margins(COUNTS, 0.3)[batch["y"]][:, None], batch["y"])
    assert terms(m, batch) == {"sup": approx(expect.item())}


def test_deferred_reweighting_switches_the_class_balanced_weights_on(setup):
    *_, batch, s, t = setup
    m = make("ce", {"drw_epoch": 3, "cb_beta": 0.999}, setup)
    plain = F.cross_entropy(s, batch["y"]).item()
    weighted = F.cross_entropy(s, batch["y"], weight=L.class_balanced_weights(COUNTS, 0.999)).item()
    assert plain != approx(weighted)
    assert terms(m, batch, 2)["sup"] == approx(plain) and terms(m, batch, 3)["sup"] == approx(weighted)
    # the adjusted losses too (VS + DRW, LA + DRW): the same weights on their adjusted logits
    w = L.class_balanced_weights(COUNTS, 0.999)
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    for params, adjusted in (({"sup_loss": "la", "la_tau": 1.5}, s + 1.5 * prior.log()),
                             ({"sup_loss": "bsce"}, s + torch.tensor(COUNTS, dtype=torch.float32).log()),
                             ({"sup_loss": "vs", "vs_gamma": 0.2, "vs_tau": 1.2}, s * L.vs_scales(COUNTS, 0.2) + 1.2 * prior.log())):
        m = make("ce", {**params, "drw_epoch": 3, "cb_beta": 0.999}, setup)
        assert terms(m, batch, 2)["sup"] == approx(F.cross_entropy(adjusted, batch["y"]).item()), params
        assert terms(m, batch, 3)["sup"] == approx(F.cross_entropy(adjusted, batch["y"], weight=w).item()), params


def test_mixup_targets_reach_the_supervised_loss(setup):
    *_, batch, s, t = setup
    perm = torch.arange(12).flip(0)
    onehot = F.one_hot(batch["y"], C).float()
    mixed = {**batch, "y_soft": 0.7 * onehot + 0.3 * onehot[perm], "mix_lam": torch.tensor(0.7), "mix_perm": perm}
    ce = make("ce", {}, setup)
    assert terms(ce, mixed)["sup"] == approx(L.soft_cross_entropy(s, mixed["y_soft"]).item())
    focal = make("ce", {"sup_loss": "focal"}, setup)  # hard-label losses mix the two label sets
    expect = 0.7 * L.focal_loss(s, batch["y"], 1.0) + 0.3 * L.focal_loss(s, batch["y"][perm], 1.0)
    assert terms(focal, mixed)["sup"] == approx(expect.item())
    vs = make("ce", {"sup_loss": "vs", "vs_gamma": 0.2, "vs_tau": 1.2}, setup)  # Mixup + VS: the soft targets
    scales, prior = L.vs_scales(COUNTS, 0.2), torch.tensor(COUNTS) / sum(COUNTS)
    expect = 0.7 * L.vs_loss(s, batch["y"], scales, prior, 1.2) + 0.3 * L.vs_loss(s, batch["y"][perm], scales, prior, 1.2)
    assert terms(vs, mixed)["sup"] == approx(expect.item()) and terms(vs, mixed)["sup"] != approx(terms(vs, batch)["sup"])


# ---------------------------------------------------------------------------------- logit methods


def test_kd_uses_its_temperature_and_weights(setup):
    *_, batch, s, t = setup
    m = make("kd", {"temperature": 3.7, "kd_weight": 0.6, "sup_weight": 0.9}, setup)
    assert terms(m, batch) == {"sup": approx(0.9 * F.cross_entropy(s, batch["y"]).item()),
                               "kd": approx(0.6 * L.kd_loss(s, t, 3.7).item())}


def test_wkd_weights_by_inverse_frequency(setup):
    *_, batch, s, t = setup
    m = make("wkd", {"temperature": 2.5}, setup)
    expect = L.weighted_kd_loss(s, t, batch["y"], L.inverse_frequency_weights(COUNTS), 2.5)
    assert terms(m, batch)["wkd"] == approx(expect.item())


def test_bkd_effective_number_weights_from_its_start_epoch(setup):
    *_, batch, s, t = setup
    m = make("bkd", {"temperature": 2.5, "bkd_beta": 0.999, "bkd_start_epoch": 3}, setup)
    effective = L.bkd_loss(s, t, L.class_balanced_weights(COUNTS, 0.999), 2.5).item()
    inverse = L.bkd_loss(s, t, L.inverse_frequency_weights(COUNTS), 2.5).item()
    assert effective != approx(inverse)  # the two weightings are distinguishable on these counts
    assert terms(m, batch, 2)["bkd"] == approx(L.kd_loss(s, t, 2.5).item())  # plain KD before the switch
    assert terms(m, batch, 3)["bkd"] == approx(effective)
    assert terms(m, batch, 3)["sup"] == approx(F.cross_entropy(s, batch["y"]).item())  # instance-balanced CE


def test_ltkd_groups_alpha_beta_temperature(setup):
    info, *_, batch, s, t = setup
    m = make("ltkd", {"temperature": 2.0, "ltkd_alpha": 6.0, "ltkd_beta": 3.0}, setup)
    groups = torch.tensor(make_groups("thirds", COUNTS).class_to_group)
    assert terms(m, batch)["ltkd"] == approx(L.ltkd_loss(s, t, groups, 6.0, 3.0, 2.0).item())


def test_cckd_prepares_its_priors_and_uses_them(setup):
    *_, batch, s, t = setup
    m = make("cckd", {"temperature": 3.0, "cckd_prior_source": "balanced_train", "la_tau": 1.0}, setup)
    zt_test = torch.randn(30, C)
    zt_train = torch.randn(40, C)
    asked = []

    def teacher_on(split, key="logits", view=None):
        asked.append((split, key))
        return (zt_test if split == "balanced_train" else zt_train), torch.zeros(1)

    m.prepare(teacher_on)
    assert asked == [("balanced_train", "logits"), ("train", "logits")]
    prior_t = torch.softmax(zt_test, 1).mean(0)  # Eq. 9
    prior_tr = torch.softmax((zt_train - prior_t.log()) / 3.0, 1).mean(0)  # Eq. 4
    got = terms(m, batch)
    assert got["cckd"] == approx(L.cckd_loss(s, t, prior_t, prior_tr, None, 3.0).item())
    assert got["sup"] == approx(L.logit_adjusted_loss(s, batch["y"], torch.tensor(COUNTS) / sum(COUNTS), 1.0).item())
    assert "criterion.teacher_prior" in m.state_dict()  # saved with the run: a resume does not re-estimate


def test_dkd_warmup(setup):
    *_, batch, s, t = setup
    m = make("dkd", {"temperature": 2.0, "dkd_alpha": 0.5, "dkd_beta": 4.0, "dkd_warmup": 4}, setup)
    full = L.dkd_loss(s, t, batch["y"], 0.5, 4.0, 2.0).item()
    assert terms(m, batch, 1)["dkd"] == approx(0.5 * full) and terms(m, batch, 9)["dkd"] == approx(full)


def test_dist_and_dive(setup):
    *_, batch, s, t = setup
    m = make("dist", {"temperature": 2.0, "dist_beta": 0.5, "dist_gamma": 2.0}, setup)
    assert terms(m, batch)["dist"] == approx(L.dist_loss(s, t, 0.5, 2.0, 2.0).item())
    m = make("dive", {"temperature": 2.0, "dive_power": 0.3}, setup)
    got = terms(m, batch)
    assert got["dive"] == approx(L.dive_loss(s, t, 2.0, 0.3).item())
    assert got["sup"] == approx(L.balanced_softmax_loss(s, batch["y"], COUNTS).item())


# ---------------------------------------------------------------------------------- composite methods


def test_acckd_terms(setup):
    info, student, teacher, batch, s, t = setup
    m = make("acckd", {"temperature": 3.0, "alpha1": 0.5, "alpha2": 2.5}, setup)
    req = m.batch_request()
    assert req.balanced_mix and req.balanced_mix_alpha == 0.5
    x_mix = torch.randn(12, 1, 8, 8)
    y_a = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 8])
    full = {**batch, "x_mix": x_mix, "y_a": y_a, "y_b": batch["y"]}
    with torch.no_grad():
        s_mix, t_mix = m.student(x_mix), teacher(x_mix)
        s_out, t_out = m.student(batch["x"]), teacher(batch["x"])
        proj = m.projector
        prior = torch.tensor(COUNTS) / sum(COUNTS)
        tp, sp = m.cckd.teacher_prior, m.cckd.student_train_prior
        inv = 1.0 / torch.tensor(COUNTS, dtype=torch.float)
        w = (inv / inv.mean())[batch["y"]]
        expect = {
            "sup": L.logit_adjusted_loss(s, batch["y"], prior, 1.0),
            "sup_mix": L.pair_supervised_loss(s_mix["logits"], t_mix["logits"], y_a, batch["y"], prior.log()),
            "cckd": 0.5 * L.cckd_loss(s, t, tp, sp, None, 3.0),
            "cckd_mix": 0.5 * L.cckd_loss(s_mix["logits"], t_mix["logits"], tp, sp, None, 3.0),
            "fi": 2.5 * L.cosine_imitation_loss(proj(s_out["features"]["pooled"]), t_out["features"]["pooled"], w),
            "fi_mix": 2.5 * L.cosine_imitation_loss(proj(s_mix["features"]["pooled"]), t_mix["features"]["pooled"]),
        }
    got = terms(m, full)
    assert got == {k: approx(v.item()) for k, v in expect.items()}


def _vit(setup):
    info, *_ = setup
    return build_model("deit_ti_distilled", C, 1, 8, patch_size=2, depth=1, embed_dim=16, num_heads=2).eval()


def test_deitlt_cls_and_hard_dist_with_drw(setup):
    info, student, teacher, batch, s, t = setup
    vit = _vit(setup)
    m = make("deitlt", {"label_smoothing": 0.2, "cls_weight": 0.3, "dist_weight": 0.7,
                        "dist": {"drw_epoch": 5, "drw_beta": 0.99}}, setup, student=vit)
    with torch.no_grad():
        out = m.student(batch["x"])
    y_t = t.argmax(1)
    cls = 0.3 * F.cross_entropy(out["logits_cls"], batch["y"], label_smoothing=0.2)
    before = 0.7 * F.cross_entropy(out["logits_dist"], y_t)
    after = 0.7 * F.cross_entropy(out["logits_dist"], y_t, weight=L.class_balanced_weights(COUNTS, 0.99))
    assert terms(m, batch, 4) == {"cls": approx(cls.item()), "dist": approx(before.item())}
    assert terms(m, batch, 5)["dist"] == approx(after.item())


def test_deitlt_teacher_augment_gives_the_teacher_its_own_view(setup, tmp_path):
    # Table 1's "weak" teacher augmentation: the teacher labels the batch's x_key (its own view of the
    # same images), the CLS head still learns from x; without teacher_augment the teacher sees x
    from taildistill.errors import ConfigError
    from taildistill.methods import resolve_params

    info, student, teacher, batch, s, _ = setup
    teacher = copy.deepcopy(teacher)  # with a large random head: an untrained net's labels are near constant
    head = [mod for mod in teacher.modules() if isinstance(mod, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1)) * 10)
        t = teacher(batch["x"])["logits"]
    m = make("deitlt", {"teacher_augment": {"crop_padding": 2, "flip": True}, "dist": {"drw_epoch": -1}}, setup,
             student=_vit(setup), teacher=teacher)
    view = m.batch_request().second_view
    assert view is not None and view.crop_padding == 2 and view.flip and view.random_resized_crop == 0
    x_key = torch.randn_like(batch["x"])
    with torch.no_grad():
        out = m.student(batch["x"])
        y_key = teacher(x_key)["logits"].argmax(1)
    assert not torch.equal(y_key, t.argmax(1))  # (the two views' teacher labels differ: the test can tell them apart)
    got = terms(m, {**batch, "x_key": x_key})
    assert got["dist"] == approx(0.5 * F.cross_entropy(out["logits_dist"], y_key).item())
    # Table 1's Tch. Acc.: the teacher's labels of the view it sees against the images' labels
    with torch.no_grad():
        acc = m({**batch, "x_key": x_key}, 0).metrics["teacher_acc"]
        # labelled as the teacher labels its own view: 100 on that view, less on the student's
        agree = m({**batch, "y": y_key, "x_key": x_key}, 0).metrics["teacher_acc"]
    assert acc.item() == approx((y_key == batch["y"]).float().mean().item() * 100)
    assert agree.item() == approx(100.0) and (t.argmax(1) == y_key).float().mean().item() < 1
    assert got["cls"] == approx(0.5 * F.cross_entropy(out["logits_cls"], batch["y"], label_smoothing=0.1).item())
    assert m.refuses_mixing() and not make("deitlt", {}, setup, student=_vit(setup)).refuses_mixing()
    assert make("deitlt", {}, setup, student=_vit(setup)).batch_request().second_view is None
    with pytest.raises(ConfigError, match="x_key"):
        m(batch, 0)
    for raw, needle in (({"teacher_augment": {"cutmix_alpha": 1.0}}, "teacher_augment is a view"),
                        ({"teacher_augment": {"flip": 3}}, "method.teacher_augment.flip"),
                        ({"teacher_augment": [1]}, "teacher_augment' expects a mapping")):
        with pytest.raises(ConfigError, match=needle):
            resolve_params("deitlt", raw)
    from test_engine import tiny
    from taildistill.engine.trainer import Trainer, fit

    vit = {"name": "deit_ti_distilled", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}}
    own_view = {"name": "deitlt", "teacher_augment": {"crop_padding": 1, "flip": True}}
    teacher_run = fit(tiny(epochs=1), tmp_path / "teacher", quiet=True)
    with pytest.raises(ConfigError, match="deitlt' takes unmixed batches .method.teacher_augment"):
        Trainer(tiny(method=own_view, model=vit, teacher=teacher_run, augment={"mixup_alpha": 0.8}),
                tmp_path / "mixup", quiet=True)
    # the engine builds the teacher's view from the method's request (without it the step raises above)
    assert fit(tiny(epochs=1, method=own_view, model=vit, teacher=teacher_run), tmp_path / "own", quiet=True)


def test_deitlt_with_cckd_on_the_dist_head_estimates_the_cckd_priors(setup):
    info, student, teacher, batch, s, t = setup
    m = make("deitlt", {"dist_criterion": "cckd", "dist": {"temperature": 2.0}, "teacher_image_size": 16}, setup,
             student=_vit(setup), teacher=build_model("convnet_small", C, 1, 16, width=4).eval())
    zt = torch.randn(20, C)
    seen_views = []

    def teacher_on(split, key="logits", view=None):
        seen_views.append(view(torch.zeros(2, 1, 8, 8)).shape[-1])  # the teacher's resized view
        return zt, torch.zeros(1)

    m.prepare(teacher_on)  # the engine always calls prepare; DeiT-LT delegates to its DIST criterion
    assert torch.allclose(m.dist_criterion.teacher_prior, torch.softmax(zt, 1).mean(0))
    assert seen_views == [16, 16]


def test_ltsf_terms(setup):
    info, student, teacher, batch, s, t = setup
    snn = build_model("spikingformer", C, 1, 8, patch_size=2, dim=16, depth=3, heads=2, time_steps=1).eval()
    m = make("ltsf", {"temperature": 2.0, "lambda_glo": 0.3, "lambda_loc": 0.2, "delta_theta": 0.5}, setup, student=snn)
    feats = torch.randn(30, teacher.feature_dim)
    labels = torch.arange(30) % C
    m.prepare(lambda split, key="logits", view=None: (feats, labels))
    with torch.no_grad():
        out = m.student(batch["x"])
        t_out = teacher(batch["x"])
        bench = m.theta(m.class_means[batch["y"]]).norm(dim=1) + 0.5
        l_t = (bench - m.theta(t_out["features"]["pooled"]).norm(dim=1)).abs().mean()
        l_s = sum((bench - m.phi[e](out["features"][e]).norm(dim=1)).abs().mean() for e in ("exit1", "exit2", "exit3"))
        expect = {"sup": F.cross_entropy(out["logits"], batch["y"]),
                  "glo": 0.3 * L.kd_loss(out["logits"], t_out["logits"], 2.0),
                  "loc": 0.2 * (l_t + l_s / 3)}
    assert terms(m, batch) == {k: approx(v.item()) for k, v in expect.items()}


def test_reviewkd_ramp_and_catkd(setup):
    info, student, teacher, batch, s, t = setup
    feats = ["stage1", "stage2", "pooled"]
    m = make("reviewkd", {"student_features": feats, "teacher_features": feats, "mid_channels": 4,
                          "review_weight": 2.0, "warmup_epochs": 4}, setup)
    with torch.no_grad():
        mapped = m.review([m.student(batch["x"])["features"][f] for f in feats])
        t_feats = teacher(batch["x"])["features"]
        hcl = L.hcl_loss(mapped, [t_feats["stage1"], t_feats["stage2"], t_feats["pooled"][:, :, None, None]], (4, 2, 1))
    assert terms(m, batch, 0)["review"] == approx(2.0 * 0.25 * hcl.item())
    assert terms(m, batch, 7)["review"] == approx(2.0 * hcl.item())
    # an ABF resizes the fused map to the teacher's size (nearest) before its 3x3 convolution, as
    # ReviewKD's code; the fused map at that size is the residual handed to the shallower level
    abf = m.abfs[0]
    with torch.no_grad():
        x = torch.randn(2, abf.reduce[0].in_channels, 4, 4)
        out, residual = abf(x, None, (8, 8))
        resized = F.interpolate(abf.reduce(x), size=(8, 8), mode="nearest")
        assert torch.allclose(residual, resized) and torch.allclose(out, abf.out(resized))
    # mid_channels 0 (the default): min(512, the student's deepest reviewed feature's channels)
    default = make("reviewkd", {"student_features": feats, "teacher_features": feats}, setup)
    deepest = m.student(batch["x"])["features"]["pooled"].shape[1]
    assert {a.reduce[0].out_channels for a in default.abfs} == {min(512, deepest)}
    m = make("catkd", {"cat_weight": 50.0, "cam_resolution": 2}, setup)
    with torch.no_grad():
        sf, tf = m.student(batch["x"])["features"]["pre_pool"], teacher(batch["x"])["features"]["pre_pool"]
        cams_s = L.class_activation_maps(sf, m.student.fc.weight, m.student.fc.bias)
        cams_t = L.class_activation_maps(tf, teacher.fc.weight, teacher.fc.bias)
    assert terms(m, batch)["cat"] == approx(50.0 * L.cat_loss(cams_s, cams_t, 2, True).item())
    from taildistill.errors import ConfigError

    make("catkd", {"cam_resolution": 4}, setup)  # the 4x4 maps themselves
    with pytest.raises(ConfigError, match=r"cam_resolution' \(5\) is larger than the student's 'pre_pool' map \(4x4\)"):
        make("catkd", {"cam_resolution": 5}, setup)  # adaptive pooling would upsample the maps


def _ride(experts=3):
    return build_model("ride_resnet32", C, 1, 8, num_experts=experts).eval()


def _direct_diversity(z, temperature):
    """RIDE's diversity KL written out: sum_e Tbar^2 KL(softmax(mean_e z / T) || softmax(z_e / T))."""
    T = temperature.view(1, -1) if torch.is_tensor(temperature) else temperature
    t_mean = float(temperature.mean()) if torch.is_tensor(temperature) else temperature
    target = F.softmax(z.mean(1) / T, 1)
    return sum(t_mean ** 2 * F.kl_div(F.log_softmax(z[:, e] / T, 1), target, reduction="batchmean")
               for e in range(z.shape[1]))


def test_ride_per_expert_ldam_drw_and_the_distribution_aware_diversity(setup):
    """Each expert gets its own LDAM (class-balanced from drw_epoch); the diversity KL to the
    experts' mean is subtracted with its weight, at one temperature before DRW and at RIDE's
    per-class temperatures (T0 * w_c / max w, w_c = C p_c f + 1 - f) from it on."""
    info, student, teacher, batch, s, t = setup
    m = make("ride", {"drw_epoch": 2, "ldam_max_margin": 0.4, "diversity_weight": 0.3, "diversity_temperature": 1.5,
                      "diversity_reweight": 0.1}, setup, student=_ride())
    with torch.no_grad():
        out = m.student(batch["x"])
    z, y = out["expert_logits"], batch["y"]
    assert z.shape == (12, 3, C) and torch.allclose(out["logits"], z.mean(1))
    margins, cb = L.ldam_margins(COUNTS, 0.4), L.class_balanced_weights(COUNTS)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    w = C * prior * 0.1 + 0.9
    per_class = (1.5 * w / w.max()).float()
    before, after = terms(m, batch, 1), terms(m, batch, 2)
    assert before["sup"] == approx(sum(L.ldam_loss(z[:, e], y, margins, 30.0).item() for e in range(3)))
    assert after["sup"] == approx(sum(L.ldam_loss(z[:, e], y, margins, 30.0, cb).item() for e in range(3)))
    assert before["diversity"] == approx(-0.3 * _direct_diversity(z, 1.5).item())
    assert after["diversity"] == approx(-0.3 * _direct_diversity(z, per_class).item())
    assert before["diversity"] < 0  # the term rewards experts that differ from their mean
    from taildistill.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a multi-expert student"):
        make("ride", {"sup_loss": "ce"}, setup)


def test_ride_distill_applies_its_criterion_to_every_expert(setup):
    """RIDE-BKD (BKD Table 8): RIDE's terms plus the criterion (BKD here, with its own
    parameters) between each expert and the teacher's prediction, summed over experts."""
    info, student, teacher, batch, s, t = setup
    m = make("ride_distill", {"sup_loss": "ce", "kd_weight": 0.7, "kd": {"temperature": 3.0, "bkd_beta": 0.99}},
             setup, student=_ride(2))
    with torch.no_grad():
        z = m.student(batch["x"])["expert_logits"]
    cb = L.class_balanced_weights(COUNTS, 0.99)
    got = terms(m, batch)
    assert got["bkd"] == approx(0.7 * sum(L.bkd_loss(z[:, e], t, cb, 3.0).item() for e in range(2)))
    assert got["sup"] == approx(sum(F.cross_entropy(z[:, e], batch["y"]).item() for e in range(2)))
    assert got["diversity"] == approx(-0.2 * _direct_diversity(z, 1.0).item())
    kd = make("ride_distill", {"sup_loss": "ce", "kd_criterion": "kd", "kd": {"temperature": 2.0}}, setup, student=_ride(2))
    with torch.no_grad():
        z = kd.student(batch["x"])["expert_logits"]
    assert terms(kd, batch)["kd"] == approx(sum(L.kd_loss(z[:, e], t, 2.0).item() for e in range(2)))
    kd.params.kd_target = "mean"  # RIDE's own distillation: the experts' mean prediction
    assert terms(kd, batch)["kd"] == approx(L.kd_loss(z.mean(1), t, 2.0).item())


def test_paco_contrasts_queries_with_centres_keys_and_the_queue_and_updates_them_once_per_step(setup):
    info, student, teacher, batch, s, t = setup
    m = make("paco", {"queue_size": 16, "alpha": 0.2, "temperature": 0.1, "momentum": 0.9}, setup).train()
    x_key = batch["x"].flip(3)
    full = {**batch, "x_key": x_key}
    assert all(not p.requires_grad for p in [*m.key_student.parameters(), *m.key_projector.parameters()])
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)

    def direct():
        q = F.normalize(m.projector(m.student(batch["x"])["features"]["pooled"]), dim=1)
        with torch.no_grad():
            k = F.normalize(m.key_projector(m.key_student(x_key)["features"]["pooled"]), dim=1)
        y = batch["y"]
        feats, labels = torch.cat([q, k, m.queue]), torch.cat([y, y, m.queue_labels])
        valid = torch.cat([torch.ones(24, dtype=torch.bool), m.queue_filled])
        return L.paco_loss(m.student(batch["x"])["logits"], feats, labels, y, prior, 0.1, 0.2, 1.0, 1.0, valid), k

    torch.manual_seed(0)
    got = m(full, 0).terms["paco"]
    # (the projector's batch norm in training mode: the same batch gives the same statistics)
    want, k = direct()
    assert float(got.detach()) == approx(float(want.detach())) and not m.queue_filled.any()
    # a SAM step runs the forward twice: the queue and the key encoder still move once, after the step
    m(full, 0)
    before = [p.clone() for p in m.key_student.parameters()]
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(0.5)
    m.after_step()
    assert m.queue_filled.sum() == 12 and int(m.queue_next) == 12 and torch.equal(m.queue_labels[:12], batch["y"])
    assert torch.allclose(m.queue[:12], k, atol=1e-6)
    for old, key, online in zip(before, m.key_student.parameters(), m.student.parameters()):
        assert torch.allclose(key, 0.9 * old + 0.1 * online, atol=1e-6)
    m(full, 0)
    m.after_step()  # 12 more keys into 16 slots: the oldest four are replaced, the pointer wraps
    assert m.queue_filled.all() and int(m.queue_next) == 8
    # the filled queue is part of the contrast now
    assert float(m(full, 0).terms["paco"].detach()) == approx(float(direct()[0].detach()))


def test_paco_refuses_what_it_cannot_do(setup, tmp_path):
    from taildistill.errors import ConfigError
    from taildistill.methods import resolve_params

    for raw, needle in (({"key_augment": {"mixup_alpha": 1.0}}, "key_augment is a view"),
                        ({"key_augment": {"cutout": -2}}, "method.key_augment.cutout"),
                        ({"key_augment": {"blur": 1}}, "blur"), ({"momentum": 1.0}, "momentum"),
                        ({"temperature": 0}, "temperature")):
        with pytest.raises(ConfigError, match=needle):
            resolve_params("paco", raw)
    m = make("paco", {}, setup)
    with pytest.raises(ConfigError, match="x_key"):
        m({"x": setup[3]["x"], "y": setup[3]["y"]}, 0)
    from test_engine import tiny
    from taildistill.engine.trainer import Trainer

    with pytest.raises(ConfigError, match="paco' trains in one process without gradient accumulation"):
        Trainer(tiny(method={"name": "paco"}, train={"grad_accum": 2}), tmp_path / "accum", quiet=True)
    with pytest.raises(ConfigError, match="paco' takes unmixed batches.*augment.mixup_alpha=0"):
        Trainer(tiny(method={"name": "paco"}, augment={"mixup_alpha": 1.0}), tmp_path / "mixup", quiet=True)


def test_a_sam_step_moves_pacos_queue_and_key_encoder_once(setup):
    # SAM runs the forward twice per step (engine/step.py): the keys go into the queue once, the key
    # encoder takes one momentum step toward the updated network; a batch larger than the queue
    # keeps its last keys
    from taildistill.engine.optim import build_optimizer
    from taildistill.engine.step import TrainStep
    from taildistill.config import OptimConfig

    info, student, teacher, batch, s, t = setup
    m = make("paco", {"queue_size": 8, "momentum": 0.5}, setup).train()
    opt = build_optimizer(OptimConfig(lr=0.1, sam_rho=0.05), m, "cpu")
    assert not any(p is q for g in opt.param_groups for p in g["params"] for q in m.key_student.parameters())
    key_before = [p.clone() for p in m.key_student.parameters()]
    full = {**batch, "x_key": batch["x"].flip(3)}
    with torch.no_grad():
        k = F.normalize(m.key_projector(m.key_student(full["x_key"])["features"]["pooled"]), dim=1)
    TrainStep(m, m, opt, torch.device("cpu"), sam_rho=0.05)(full, 0)
    # (12 keys, 8 slots: the last 8 keys fill the queue once, and the next write starts at slot 0 again)
    assert int(m.queue_next) == 0 and m.queue_filled.all()
    assert torch.equal(m.queue_labels, batch["y"][4:]) and torch.allclose(m.queue, k[4:], atol=1e-6)
    for old, key, online in zip(key_before, m.key_student.parameters(), m.student.parameters()):
        assert torch.allclose(key, 0.5 * old + 0.5 * online, atol=1e-6)


def test_every_registered_method_is_covered_here():
    """A new method needs a wiring test of its own."""
    import inspect
    import sys

    from taildistill.methods import METHODS

    source = inspect.getsource(sys.modules[__name__])
    missing = [n for n in METHODS.names() if not n.startswith("_") and f'"{n}"' not in source]
    assert not missing, missing


def test_every_methods_numeric_parameters_refuse_negative_values():
    """A negative weight, temperature, margin or size trains into nonsense without a word: every
    registered method refuses one by name (a nested criterion's too), except a field its dataclass
    declares SIGNED (drw_epoch: -1 = never)."""
    import dataclasses

    from taildistill.errors import ConfigError
    from taildistill.methods import METHODS, method_class, resolve_params

    for name in METHODS.names():
        defaults = method_class(name).Params()
        for f in dataclasses.fields(defaults):
            value = getattr(defaults, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if f.name == "drw_epoch":
                assert resolve_params(name, {f.name: -1}).drw_epoch == -1
                continue
            with pytest.raises(ConfigError, match=f"'method.{f.name}' must be"):
                resolve_params(name, {f.name: -1})
    with pytest.raises(ConfigError, match="'method.dist.temperature' must be"):
        resolve_params("deitlt", {"dist_criterion": "kd", "dist": {"temperature": -2}})
    assert resolve_params("deitlt", {"dist": {"drw_epoch": -1}}).dist.drw_epoch == -1
    with pytest.raises(ConfigError, match="'method.label_smoothing' must be in"):
        resolve_params("deitlt", {"label_smoothing": 1.5})  # its own CLS-head smoothing, as the supervised one
    for name, key, bad in (("reviewkd", "mid_channels", -1), ("catkd", "cam_resolution", 0), ("ltsf", "latent_dim", 0)):
        with pytest.raises(ConfigError, match=f"'method.{key}'"):  # sizes: >= 1 (ReviewKD: 0 is its own rule)
            resolve_params(name, {key: bad})


def test_a_trained_cosine_head_teacher_is_confident_and_ldam_checks_its_head(tmp_path):
    """A cosine head's logits are s * cos: a teacher trained with LDAM-DRW gives confident
    softmaxes on its training images (raw cosines gave ~0.23 on 10 classes), and LDAM refuses a
    head without s, or with another s than its own."""
    from taildistill.engine.trainer import Trainer
    from taildistill.errors import ConfigError
    from taildistill.experiment import build_config

    raw = {"name": "ldam", "data": {"source": "digits", "profile": "exp", "ratio": 10},
           "model": {"name": "resnet20", "kwargs": {"cosine_head": True}},
           "optim": {"lr": 0.05}, "schedule": {"name": "cosine", "warmup_epochs": 1},
           "train": {"epochs": 6, "batch_size": 64, "device": "cpu", "tensorboard": False, "progress": False},
           "method": {"name": "ce", "sup_loss": "ldam", "drw_epoch": 4}}
    trainer = Trainer(build_config(raw), tmp_path / "ldam", quiet=True)
    trainer.run()
    probs = torch.softmax(trainer.predict_split(trainer.data.train)["logits"], 1)
    assert probs.max(1).values.mean() > 0.6
    with pytest.raises(ConfigError, match="needs a cosine head"):
        build_method("ce", {"sup_loss": "ldam"}, build_model("resnet20", 10, 1, 8), None, trainer.data.info)
    with pytest.raises(ConfigError, match="differs from method.ldam_scale"):
        build_method("ce", {"sup_loss": "ldam", "ldam_scale": 16.0},
                     build_model("resnet20", 10, 1, 8, cosine_head=True), None, trainer.data.info)


def test_the_teacher_sees_its_own_normalisation(tmp_path):
    """A teacher trained on inputs normalised another way (here: not at all) receives each
    student batch mapped back to its own normalisation, on the device."""
    from taildistill.engine.trainer import fit
    from taildistill.experiment import build_config, load_teacher
    from taildistill.models.common import Renormalized

    common = {"data": {"source": "digits", "profile": "exp", "ratio": 10},
              "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "tensorboard": False, "progress": False},
              "model": {"name": "convnet_small", "kwargs": {"width": 8}}}
    teacher_run = fit(build_config({**common, "name": "t", "augment": {"normalize": False}}), tmp_path / "t", quiet=True)
    cfg = build_config({**common, "method": {"name": "kd"}, "teacher": {"run": str(teacher_run)}})
    from taildistill.data import build_data

    info = build_data(cfg.data).info
    teacher = load_teacher(cfg, info)
    assert isinstance(teacher, Renormalized)
    raw = teacher.inner.eval()
    u = torch.rand(5, 1, 8, 8)  # images in [0, 1], as the teacher was trained on them
    x_student = (u - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(teacher.eval()(x_student)["logits"], raw(u)["logits"], atol=1e-5)
    assert teacher.feature_dim == raw.feature_dim and teacher.fc is raw.fc  # the model's own attributes
    same = build_config({**common, "method": {"name": "kd"}, "teacher": {"run": str(
        fit(build_config({**common, "name": "t2"}), tmp_path / "t2", quiet=True))}})
    assert not isinstance(load_teacher(same, info), Renormalized)  # the same statistics: nothing to map


# ---------------------------------------------------------------------------------- graph keys

def _graph_key_cases(setup):
    """(method, params, student) with every epoch switch and ramp early, for every registered method."""
    feats = ["stage1", "stage2", "pooled"]
    snn = build_model("spikingformer", C, 1, 8, patch_size=2, dim=16, depth=3, heads=2, time_steps=1).eval()
    return {
        "ce": ({"drw_epoch": 2}, None), "kd": ({"drw_epoch": 3}, None), "wkd": ({"drw_epoch": 1}, None),
        "bkd": ({"bkd_start_epoch": 2, "drw_epoch": 4}, None), "ltkd": ({"drw_epoch": 1}, None),
        "cckd": ({"drw_epoch": 2, "sup_loss": "ce"}, None), "dkd": ({"dkd_warmup": 3}, None),
        "dist": ({"drw_epoch": 1}, None), "dive": ({"drw_epoch": 1, "sup_loss": "ce"}, None),
        "acckd": ({"drw_epoch": 2, "sup_loss": "ce"}, None),
        "deitlt": ({"dist": {"drw_epoch": 3}}, _vit(setup)),
        "reviewkd": ({"student_features": feats, "teacher_features": feats, "mid_channels": 4, "warmup_epochs": 3,
                      "drw_epoch": 4}, None),
        "catkd": ({"drw_epoch": 2}, None), "ltsf": ({"drw_epoch": 2}, snn),
        "ride": ({"drw_epoch": 2}, _ride(2)),
        "ride_distill": ({"drw_epoch": 4, "sup_loss": "ce", "kd": {"bkd_start_epoch": 2}}, _ride(2)),
        "paco": ({"queue_size": 16}, None),
    }


NO_EPOCH_SWITCH = {"paco"}  # its loss never changes with the epoch: one graph for the whole run


def test_graph_keys_name_everything_the_loss_takes_from_the_epoch(setup):
    """A captured step (train.cuda_graph) is replayed for every epoch with the same graph_key: two
    such epochs must give the same loss on the same batch and weights, for every registered method
    (a key that forgets deferred re-weighting, BKD's start or a ramp fails here); and the keys do
    change where the loss does."""
    from taildistill.methods import METHODS

    info, student, teacher, batch, s, t = setup
    full = {**batch, "x_mix": torch.randn(12, 1, 8, 8), "y_a": batch["y"].flip(0), "y_b": batch["y"],
            "x_key": torch.randn(12, 1, 8, 8)}
    cases = _graph_key_cases(setup)
    assert sorted(cases) == sorted(n for n in METHODS.names() if not n.startswith("_"))
    for name, (params, model) in cases.items():
        m = make(name, params, setup, student=model)
        by_key: dict = {}
        for epoch in range(7):
            by_key.setdefault(m.graph_key(epoch), []).append(terms(m, full, epoch))
        for key, seen in by_key.items():
            assert all(other == seen[0] for other in seen[1:]), (name, key, seen)
        assert len(by_key) > 1 or name in NO_EPOCH_SWITCH, f"{name}: its switches should give more than one key over epochs 0-6"


def test_no_methods_step_reads_the_device_on_the_host(setup):
    """CUDA's sync debug mode (tests/test_cuda.py) on the CPU: no method's loss or its backward uses
    an operation that waits for the device (a tensor read as a Python number, or an output whose
    size depends on the data: a boolean-mask index, nonzero, unique), with every switch on."""
    from host_syncs import HostSyncs

    info, student, teacher, batch, s, t = setup
    full = {**batch, "x_mix": torch.randn(12, 1, 8, 8), "y_a": batch["y"].flip(0), "y_b": batch["y"],
            "x_key": torch.randn(12, 1, 8, 8)}
    for name, (params, model) in _graph_key_cases(setup).items():
        m = make(name, params, setup, student=model).train()
        with HostSyncs() as mode:
            out = m(full, 6)
            sum(out.terms.values()).backward()
            m.after_step()  # (PaCo's queue and key encoder)
        assert not mode.seen, (name, mode.seen)
