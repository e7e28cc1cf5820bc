"""What one running Space holds: the registry (a folder, or a Hub dataset mirrored and synced back), and who
may act as a moderator.

Moderators: Hub users signed in with OAuth whose username is in `HUBGUARD_MODERATORS` or who belong to an
organisation in `HUBGUARD_MODERATOR_ORG` (OAuth's userinfo lists the organisations the user granted the Space);
where no Hub OAuth is set up (a local run), whoever gives the secret `HUBGUARD_MODERATOR_TOKEN`. Every
moderator action calls `require_moderator` on the server, so the UI, the HTTP API and gradio_client meet the
same check.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import HubguardError
from hubguard.registry.locate import parse_hub_registry
from hubguard.utils import get_logger

if TYPE_CHECKING:
    from hubguard.registry import Registry
    from hubguard.registry.sync import RegistrySync

logger = get_logger(__name__)


class ModeratorRequired(HubguardError):
    """A moderator action was asked for by someone who is not a moderator."""

    default_fix = "Sign in with a Hugging Face account on the moderators' list, or ask a moderator."


@dataclass(frozen=True)
class Moderators:
    usernames: tuple[str, ...]
    orgs: tuple[str, ...]
    token: str | None
    token_name: str
    oauth: bool

    @classmethod
    def from_env(cls) -> "Moderators":
        return cls(usernames=constants.space_moderators(), orgs=constants.space_moderator_orgs(),
                   token=constants.space_moderator_token(), token_name=constants.space_moderator_name(),
                   oauth=constants.space_oauth_configured() or constants.SPACE_ID is not None)

    def describe(self) -> str:
        who = [f"users {', '.join(self.usernames)}"] if self.usernames else []
        who += [f"members of {', '.join(self.orgs)}"] if self.orgs else []
        ways = (["sign in with Hugging Face"] if self.oauth else []) + (["give the moderator token"] if self.token else [])
        if not ways or not (who or self.token):
            return "No moderators are configured here (HUBGUARD_MODERATORS / HUBGUARD_MODERATOR_ORG / HUBGUARD_MODERATOR_TOKEN)."
        return f"Moderators ({'; '.join(who) or 'token holders'}) may act here: {' or '.join(ways)}."

    def identify(self, *, profile: Any = None, token: str | None = None) -> str | None:
        """The moderator's name for an OAuth profile (gr.OAuthProfile) or a typed token; None if not a moderator."""
        if profile is not None:
            username = str(profile.get("preferred_username") or getattr(profile, "username", "") or "")
            orgs = {str(o.get("preferred_username") or o.get("name") or "").casefold()
                    for o in (profile.get("orgs") or []) if isinstance(o, dict)}
            if username and (username.casefold() in {u.casefold() for u in self.usernames}
                             or orgs & {o.casefold() for o in self.orgs}):
                return username
        if self.token and token and hmac.compare_digest(token.strip().encode(), self.token.encode()):
            return self.token_name
        return None

    def require(self, *, profile: Any = None, token: str | None = None, action: str) -> str:
        who = self.identify(profile=profile, token=token)
        if who is None:
            asker = (profile.get("preferred_username") if profile is not None else None) or "an anonymous caller"
            logger.warning("refused moderator action %r for %s", action, asker)
            raise ModeratorRequired(f"Only moderators may {action}; {asker} is not one. {self.describe()}")
        return who


class SpaceState:
    """The registry the Space reads and writes, its sync with a Hub dataset, and the moderators' list."""

    def __init__(self, registry: "str | os.PathLike[str] | None" = None, *, sync: bool = True) -> None:
        from hubguard.registry import Registry

        spec = os.fspath(registry) if registry is not None else constants.hubguard_registry()
        self.spec = spec
        self.hub = parse_hub_registry(spec)
        self.registry: Registry = Registry(spec)
        self.sync: RegistrySync | None = None
        if self.hub is not None and sync:
            from hubguard.registry.sync import RegistrySync

            self.sync = RegistrySync(self.registry, hub_registry=self.hub, token=constants.hf_token()).start()
        self.moderators = Moderators.from_env()
        from hubguard.lineage.candidate_memo import CandidateMemo

        self.candidates = CandidateMemo()  # a re-check of an unchanged model is not fingerprinted again

    def where(self) -> str:
        if self.hub is not None:
            return f"Hub dataset {self.hub.repo_id}" + (f"@{self.hub.revision}" if self.hub.revision else "")
        return str(self.registry.path)

    def log_verdict(self, **row: Any) -> dict[str, Any]:
        """Append a verdict (committed back to the Hub dataset in the next batch when there is one)."""
        if self.sync is not None:
            return self.sync.log_verdict(**row)
        return self.registry.log_verdict(**row)

    def add_entry(self, source: Any, *, name: str, **meta: Any) -> Any:
        if self.sync is not None:
            return self.sync.add(source, name=name, **meta)
        return self.registry.add(source, name=name, **meta)

    def remove_entry(self, name: str) -> Any:
        if self.sync is not None:
            return self.sync.remove(name)
        return self.registry.remove(name)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.stop()
