"""The Space's API through gradio_client (named endpoints, named typed parameters, JSON outputs) and the
server-side moderator checks: anonymous and non-moderator calls are refused, API included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hubguard.registry import Registry
from tests.test_space import BASE, TOKEN, finetune_of, free_port

pytestmark = pytest.mark.network

PUBLIC = {"check_lineage", "compare_models", "registry_search", "registry_entry", "flagged_queue", "confirm_flag",
          "dismiss_flag", "mark_derivative", "add_entry", "remove_entry", "audit_protection", "try_example_base",
          "try_example_derivative"}


@pytest.fixture(scope="module")
def api(family_models, tmp_path_factory) -> Iterator[tuple[object, object, dict[str, Path]]]:
    gradio_client = pytest.importorskip("gradio_client")
    from hubguard.spaceapp.app import build_demo, launch
    from hubguard.spaceapp.state import SpaceState

    root = tmp_path_factory.mktemp("space-api")
    reg = Registry(root / "registry")
    reg.add(family_models["llama"][0], name=BASE, family="llama", license="apache-2.0")
    reg.log_verdict(repo_id="someone/sneaky-finetune", match=BASE, verdict="derivative", score=97.0, z=12.0, source="webhook")
    paths = {"base": family_models["llama"][0], "finetune": finetune_of(family_models["llama"][0], root / "finetune"),
             "other": family_models["gpt2"][0]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBGUARD_MODERATOR_TOKEN", TOKEN)
        state = SpaceState(root / "registry")
    port = free_port()
    demo = launch(build_demo(state=state), server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), state, paths
    finally:
        demo.close()
        state.close()


def test_every_endpoint_is_named_with_named_parameters(api) -> None:
    client, _, _ = api
    info = client.view_api(print_info=False, return_format="dict")
    named = {k.strip("/") for k in info["named_endpoints"]}
    assert named >= PUBLIC
    assert not [n for n in named if n.startswith("lambda")] and not info["unnamed_endpoints"]
    for name in PUBLIC:
        ep = info["named_endpoints"][f"/{name}"]
        assert all(len(p["parameter_name"]) > 2 for p in ep["parameters"]), (name, ep["parameters"])
        assert not [r for r in ep["returns"] if r["label"].startswith("value_")], (name, ep["returns"])
    check = info["named_endpoints"]["/check_lineage"]
    assert [p["parameter_name"] for p in check["parameters"]] == ["model", "top_k"]
    assert check["returns"][0]["component"] == "Json" and check["returns"][1]["component"] == "Html"


def test_check_compare_and_registry_search(api) -> None:
    client, _, paths = api
    report, card, dogs, _ = client.predict(model=str(paths["finetune"]), top_k=3, api_name="/check_lineage")
    assert report["verdict"] == "derivative" and report["found_bases"] == [BASE] and report["status"] == "problems"
    assert "data-verdict=\"derivative\"" in card and dogs.count("<img") == 2
    report, card, _, _ = client.predict(model="/no/such/model", top_k=3, api_name="/check_lineage")
    assert report["status"] == "error" and report["error"] == "SourceError" and report["fix"]
    comparison, card, _, _ = client.predict(reference=str(paths["base"]), candidate=str(paths["finetune"]),
                                            api_name="/compare_models")
    assert comparison["verdict"] == "derivative" and 0 <= comparison["score"] <= 100 and "z" in comparison
    listing, status, _, _, _, page = client.predict(query="base", family="all", licence="all", page=1,
                                                    api_name="/registry_search")
    assert [e["name"] for e in listing["entries"]] == [BASE] and listing["total"] == 1 and page == 1
    listing, *_ = client.predict(query="nothing-like-this", family="all", licence="all", page=1, api_name="/registry_search")
    assert listing["total"] == 0 and listing["entries"] == []
    entry = client.predict(name=BASE, api_name="/registry_entry")
    assert entry["entry"]["name"] == BASE and {d["repo_id"] for d in entry["derivatives"]} >= {"someone/sneaky-finetune"}


def test_moderator_endpoints_refuse_anonymous_and_wrong_token_callers(api) -> None:
    client, state, paths = api
    before = len(state.registry.verdicts())
    for token in ("", "not-the-token"):
        out, html, _ = client.predict(repo_id="someone/sneaky-finetune", note="x", moderator_token=token,
                                      api_name="/confirm_flag")
        assert out["status"] == "error" and out["error"] == "ModeratorRequired" and "Only moderators" in out["message"]
        out, *_ = client.predict(source=str(paths["other"]), name="evil/entry", family="", licence="", notes="",
                                 moderator_token=token, api_name="/add_entry")
        assert out["error"] == "ModeratorRequired"
        out, *_ = client.predict(name=BASE, moderator_token=token, api_name="/remove_entry")
        assert out["error"] == "ModeratorRequired"
        queue, *_ = client.predict(moderator_token=token, api_name="/flagged_queue")
        assert queue["error"] == "ModeratorRequired"
    assert len(state.registry.verdicts()) == before and state.registry.names() == [BASE]
    # The moderator token opens them: the queue, then a mark lands in the verdict log, by the moderator.
    queue, rows, _ = client.predict(moderator_token=TOKEN, api_name="/flagged_queue")
    # the webhook's flag, and the undeclared fine-tune the check above found (checks run here fill the queue)
    assert [f["repo_id"] for f in queue["flagged"]] == [str(paths["finetune"]), "someone/sneaky-finetune"]
    out, *_ = client.predict(repo_id="someone/known-ft", base=BASE, note="announced on the forum", moderator_token=TOKEN,
                             api_name="/mark_derivative")
    assert out["status"] == "ok" and out["by"] == "local-moderator"
    row = state.registry.verdicts(repo_id="someone/known-ft")[-1]
    assert row["source"] == "moderator" and row["match"] == BASE and row["verdict"] == "derivative"
    assert "someone/known-ft" in {d["repo_id"] for d in state.registry.derivatives_of(BASE)}
    out, *_ = client.predict(repo_id="someone/sneaky-finetune", note="false alarm: declared in the card's text",
                             moderator_token=TOKEN, api_name="/dismiss_flag")
    assert out["status"] == "ok"
    queue, *_ = client.predict(moderator_token=TOKEN, api_name="/flagged_queue")
    assert [f["repo_id"] for f in queue["flagged"]] == [str(paths["finetune"])]


def test_oauth_profiles_against_the_allow_list() -> None:
    from gradio import OAuthProfile

    from hubguard.spaceapp.state import ModeratorRequired, Moderators

    mods = Moderators(usernames=("Alice",), orgs=("hub-mods",), token=None, token_name="x", oauth=True)

    def profile(user: str, orgs: list[str]) -> OAuthProfile:
        return OAuthProfile({"name": user, "preferred_username": user, "profile": "", "picture": "",
                             "orgs": [{"preferred_username": o, "name": o} for o in orgs]})

    assert mods.identify(profile=profile("alice", [])) == "alice"  # usernames compare case-insensitively
    assert mods.identify(profile=profile("bob", ["hub-mods"])) == "bob"
    assert mods.identify(profile=profile("mallory", ["other-org"])) is None
    assert mods.identify(profile=None, token="anything") is None  # no token configured: none accepted
    with pytest.raises(ModeratorRequired, match="mallory is not one"):
        mods.require(profile=profile("mallory", []), action="confirm a flag")


def test_an_unprotected_adapter_is_not_protected(bpe_tokenizer, tmp_path) -> None:
    from hubguard.spaceapp.audit_view import run_audit
    from tests.support.adapters import causal_base_and_adapters

    made = causal_base_and_adapters(tmp_path, tokenizer_json=bpe_tokenizer)
    plain = run_audit(adapter_files=None, adapter_source=str(made["plain"]), base_source=str(made["base"]), eval_text=None)
    assert plain.result["verdict"] == "not protected" and Path(plain.plot).is_file()
    locked = run_audit(adapter_files=[str(made["locked"] / f) for f in ("adapter_config.json", "adapter_model.safetensors")],
                       adapter_source=None, base_source=str(made["base"]), eval_text=None)
    assert locked.result["verdict"] == "looks protected"
    from hubguard.errors import ProtectionError

    with pytest.raises(ProtectionError, match="lacks adapter_model.safetensors"):
        run_audit(adapter_files=[str(made["plain"] / "adapter_config.json")], adapter_source=None,
                  base_source=str(made["base"]), eval_text=None)
