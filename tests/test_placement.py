import pytest

from tempsamp.cli import main as cli
from tempsamp.config import load_config
from tempsamp.placement.plan import PlacementError, format_plan, make_plan

H20 = "jobs/configs/tempsamp.yaml"


def _cfg(*ov):
    from pathlib import Path

    return load_config(Path(__file__).resolve().parents[1] / H20, list(ov), env={})


def test_default_8xh20_plan():
    p = make_plan(_cfg())
    L, R, D, W = (p.roles[k] for k in ("learner", "rollout", "decode", "reward"))
    assert (L.actors, L.gpus, L.strategy) == (4, 4, "STRICT_PACK")
    assert (R.actors, R.gpus, R.gpus_per_actor) == (4, 4, 1)
    assert D.gpus == 0 and W.gpus == 0 and D.actors == 8
    assert all(b.GPU == 1 for b in L.bundles + R.bundles)


def test_two_node_and_one_gpu_colocated_plans():
    p = make_plan(_cfg("placement.num_nodes=2", "learner.num_ranks=8", "placement.learner_gpus=8",
                       "rollout.num_engines=4", "rollout.tensor_parallel_size=2"))
    assert p.roles["learner"].gpus == 8 and p.roles["rollout"].gpus == 8 and p.cluster_gpus == 16
    one = make_plan(_cfg("placement.gpus_per_node=1", "learner.num_ranks=1", "placement.learner_gpus=1",
                         "rollout.num_engines=1", "placement.colocate=true"))
    assert one.roles["learner"].gpus_per_actor == 0.5 and one.roles["rollout"].gpus_per_actor == 0.5
    assert one.roles["rollout"].shares_with == "learner"


def test_plan_that_does_not_fit_names_role_and_shortfall():
    with pytest.raises(PlacementError, match=r"role `rollout` needs 5 GPUs but only 4 are left.*short by 1"):
        make_plan(_cfg("rollout.num_engines=5"))
    with pytest.raises(PlacementError, match=r"role `learner` needs 4 GPUs but only 2"):
        make_plan(_cfg(), cluster={"GPU": 2, "CPU": 64})
    with pytest.raises(PlacementError, match=r"role `decode` needs 16 CPUs"):
        make_plan(_cfg(), cluster={"GPU": 8, "CPU": 10})
    with pytest.raises(PlacementError, match="tensor_parallel_size=16 exceeds"):
        make_plan(_cfg("rollout.tensor_parallel_size=16"))
    with pytest.raises(PlacementError, match="one learner rank per GPU"):
        make_plan(_cfg("learner.num_ranks=3"))


def test_plan_cli_table(capsys):
    from pathlib import Path

    rc = cli(["plan", "--config", str(Path(__file__).resolve().parents[1] / H20)])
    out = capsys.readouterr().out
    assert rc == 0 and "learner" in out and "STRICT_PACK" in out and "8/8" in out
    rc = cli(["plan", "--config", str(Path(__file__).resolve().parents[1] / H20), "rollout.num_engines=9"])
    assert rc == 2


@pytest.mark.ray
def test_fake_8gpu_cluster_bundles_and_visible_devices():
    import os

    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from tempsamp.cluster import reserve_placement_groups as create_placement_groups

    ray.init(address="local", num_cpus=2, num_gpus=8, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        p = make_plan(_cfg("placement.decode_actors=1", "placement.cpus_per_decode_actor=0.1",
                           "placement.cpus_per_reward_actor=0.1", "placement.cpus_per_gpu_actor=0.1"),
                      cluster={"GPU": 8, "CPU": 2})

        @ray.remote
        class Probe:
            def ids(self):
                return os.environ.get("CUDA_VISIBLE_DEVICES", ""), [str(g) for g in ray.get_gpu_ids()]

        pgs = create_placement_groups(p, name_prefix="t")
        seen = {}
        for role in ("learner", "rollout"):
            rp = p.roles[role]
            actors = [Probe.options(num_cpus=rp.cpus_per_actor, num_gpus=rp.gpus_per_actor,
                                    scheduling_strategy=PlacementGroupSchedulingStrategy(pgs[role], placement_group_bundle_index=i)).remote()
                      for i in range(rp.actors)]
            seen[role] = ray.get([a.ids.remote() for a in actors])
        for role, rows in seen.items():
            for cvd, ids in rows:
                assert cvd == ",".join(ids) and len(ids) == 1  # one GPU per actor, visible as such
        learner_gpus = {ids[0] for _, ids in seen["learner"]}
        rollout_gpus = {ids[0] for _, ids in seen["rollout"]}
        assert len(learner_gpus) == 4 and len(rollout_gpus) == 4
        assert not learner_gpus & rollout_gpus  # roles never share a GPU (not colocated)

        # a second plan while the first holds every GPU: the error names a GPU role, and none of its groups
        # (requested together) is left behind
        from ray.util.placement_group import placement_group_table

        with pytest.raises(PlacementError, match=r"role `(learner|rollout)`: Ray could not place .* within 3s"):
            create_placement_groups(p, timeout_s=3, name_prefix="second")
        states = [g["state"] for g in placement_group_table().values() if g["name"].startswith("second-")]
        assert len(states) == len(p.roles) and set(states) == {"REMOVED"}, states

        # `tempsamp train` on this GPU cluster runs `tempsamp plan`'s memory check before anything starts
        # (the shipped architecture-only Qwen3.5-4B folder: no weights, no tokenizer are needed to refuse)
        from tempsamp.placement.memory import MODEL_CONFIGS
        from tempsamp.trainer import Trainer

        with pytest.raises(PlacementError, match=r"role `learner` does not fit: .*placement.gpu_memory_gib"):
            Trainer(_cfg("placement.gpu_memory_gib=16"), model_dir=str(MODEL_CONFIGS / "Qwen3.5-4B"))
    finally:
        ray.shutdown()
