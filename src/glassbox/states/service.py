"""KV states: prompts the model has read, kept as their tokens and KV, in a tree.

A state's KV is a `KVHandle` on blocks of the engine's pool (see engine/block_manager.py).
States are immutable but for `rollback`, which truncates one in place; everything else
(fork, generation committed as a child, merge) makes a new state whose `parent_id` points
to where it came from. Forks share their parent's blocks, so they cost no KV bytes.

Memory: the states resident in the pool hold at most `budget_bytes` of it (shared blocks
count once). Past that, the least recently used are spilled to their file (states/files.py)
and come back on their next use. Records live in the database (states/records.py, written
behind in order); files in `directory`; at shutdown every resident state is written out
and every record written, so states survive a restart. A state whose
file is missing (a crash before it was spilled) is recomputed from its tokens on use.
A spill that cannot write its file (a full disk) drops the KV all the same: the state is
then served from its tokens, so a full disk costs time, never a state or a request; an
export, a file the request asks for, is refused instead (`DiskFull`, 507).

All KV work runs on the engine thread (`AsyncLLMEngine.call`); one lock orders the moves
of KV between pool and disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from glassbox.engine.block_manager import KVHandle
from glassbox.engine.llm_engine import StepOutput
from glassbox.engine.readout import Readout
from glassbox.engine.sequence import SamplingParams
from glassbox.errors import DiskFull, InvalidRequest, LimitReached, NotFound
from glassbox.logs import get_logger
from glassbox.principal import LOCAL, Principal
from glassbox.requests.builder import about
from glassbox.requests.generation import GenerationService
from glassbox.states import files
from glassbox.states.records import State, StateRecords, now
from glassbox.states.residency import Residency
from glassbox.steering.plan import SteeringPlan
from glassbox.store import Database

log = get_logger(__name__)


def not_found(state_id: str) -> NotFound:
    return NotFound("state", state_id, param="state_id")


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class StateService:
    def __init__(
        self,
        generation: GenerationService,
        db: Database,
        directory: Path,
        fingerprint: str,
        budget_bytes: int,
        max_per_tenant: int | None = None,
    ):
        """`max_per_tenant`: the most states one tenant may keep (None: no bound); a chat
        session's own states are not refused (a turn must not fail for it)."""
        self.max_per_tenant = max_per_tenant
        self.generation = generation
        self.engine = generation.engine
        self.db = db
        self.directory = Path(directory)
        self.exports = self.directory / "exports"
        self.fingerprint = fingerprint
        self.requests = generation.requests
        self.kv_bytes_per_token = self.engine.model_config.kv_bytes_per_token()
        block_bytes = self.kv_bytes_per_token * self.engine.block_size
        self.residency = Residency(budget_bytes, block_bytes)
        # The largest state file this model can have: KV and ids of a full context, a header.
        self.max_file_bytes = self.engine.max_model_len * (self.kv_bytes_per_token + 8) + 2**20
        self.records = StateRecords(db, fingerprint)
        self._states: dict[str, State] = {}
        self._on_disk: set[str] = set()  # states whose file holds their current KV
        self._lock = asyncio.Lock()
        self._giving_back: set[asyncio.Task] = set()  # releases of leases nobody took
        self.counts: Counter[str] = Counter()  # forks, exports, imports made (for /metrics)
        files.remove_stale_temporaries(self.directory)  # of writes killed midway
        self._adopt_unowned_exports()
        for state in self.records.load():
            self._states[state.state_id] = state
            if self._file(state.state_id).is_file():
                self._on_disk.add(state.state_id)

    def _file(self, state_id: str) -> Path:
        return self.directory / f"{state_id}{files.SUFFIX}"

    # --- reading ----------------------------------------------------------------------

    def get(self, owner: Principal, state_id: str) -> State:
        state = self._states.get(state_id)
        if state is None or state.owner != owner.tenant:  # another owner's: not found either
            raise not_found(state_id)
        return state

    def location(self, state_id: str) -> str:
        """'memory' (KV in the pool), 'disk' (in its file) or 'tokens' (recomputed on use)."""
        if state_id in self.residency:
            return "memory"
        on_disk = state_id in self._on_disk and self._file(state_id).is_file()
        return "disk" if on_disk else "tokens"

    def kv_bytes(self, state: State) -> int:
        return max(state.num_tokens - 1, 0) * self.kv_bytes_per_token

    def stats(self) -> dict[str, int]:
        """For /metrics: states by where their KV is (see `location`, without a file check
        each), their files' bytes, the pool bytes they hold, and `counts`."""
        disk = sum(1 for s in self._on_disk if s not in self.residency and s in self._states)
        file_bytes = 0
        for state_id in self._on_disk:
            with contextlib.suppress(OSError):  # deleted meanwhile
                file_bytes += self._file(state_id).stat().st_size
        return {
            "memory": len(self.residency), "disk": disk,
            "tokens": len(self._states) - len(self.residency) - disk,
            "file_bytes": file_bytes, "resident_bytes": self.residency.bytes,
            "budget_bytes": self.residency.budget_bytes, **self.counts,
        }  # fmt: skip

    def file_bytes(self, state_id: str) -> int | None:
        path = self._file(state_id)
        return path.stat().st_size if state_id in self._on_disk and path.is_file() else None

    def list(
        self,
        owner: Principal,
        limit: int = 20,
        after: str | None = None,
        parent_id: str | None = None,
    ) -> tuple[list[State], bool]:
        """States oldest first, `limit` at a time after the state `after`."""
        states = [s for s in self._states.values() if s.owner == owner.tenant]
        if parent_id is not None:
            states = [s for s in states if s.parent_id == parent_id]
        if after is not None:
            ids = [s.state_id for s in states]
            if after not in ids:
                raise InvalidRequest(f"No state with id '{after}' to list after", param="after")
            states = states[ids.index(after) + 1 :]
        return states[:limit], len(states) > limit

    def lineage(self, owner: Principal, state_id: str) -> list[State]:
        """The state and its ancestors, nearest first."""
        chain = [self.get(owner, state_id)]
        while chain[-1].parent_id in self._states:
            chain.append(self._states[chain[-1].parent_id])
        return chain

    def text(self, token_ids: list[int]) -> str:
        return self.engine.tokenizer.decode(token_ids, skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self.engine.tokenizer.token_str(token_id)

    # --- KV residency -----------------------------------------------------------------

    async def _resident(self, state: State) -> KVHandle:
        """The state's handle in the pool, loading or recomputing its KV if needed (call
        with the lock held)."""
        handle = self.residency.get(state.state_id)
        if handle is not None:
            return handle
        loaded = None
        if state.state_id in self._on_disk:
            loaded = await asyncio.to_thread(self._read_file, state)
            if loaded is None:
                self._on_disk.discard(state.state_id)
        if loaded is not None:
            call = lambda e: e.load_kv(state.token_ids, loaded.kv)  # noqa: E731
        else:
            call = lambda e: e.prefill_kv(state.token_ids)  # noqa: E731
        handle = await self.engine.call(call)
        self.residency.add(state.state_id, handle)
        return handle

    def _read_file(self, state: State) -> files.StateFile | None:
        """The state's spilled KV, or None (then it is recomputed from its tokens) if the
        file is gone, damaged, or not this state's."""
        path = self._file(state.state_id)
        try:
            loaded = files.decode(path.read_bytes())
        except (OSError, files.StateFileError) as exc:
            log.warning("state file unusable; recomputing", state_id=state.state_id, error=str(exc))
            loaded = None
        if loaded is not None and (
            loaded.token_ids != state.token_ids or loaded.fingerprint != self.fingerprint
        ):
            log.warning("state file does not match its record; recomputing",
                        state_id=state.state_id)  # fmt: skip
            loaded = None
        return loaded

    async def _fit_budget(self, keep: str | None) -> None:
        """Spill the least recently used resident states until the rest fit the budget."""
        for victim in self.residency.victims(keep):
            await self._spill(victim)

    async def _spill(self, state_id: str) -> None:
        handle = self.residency.get(state_id)
        if state_id not in self._on_disk:
            state = self._states[state_id]
            kv = await self.engine.call(lambda e: e.read_kv(handle))
            data = await asyncio.to_thread(
                files.encode, self.fingerprint, state.token_ids, kv, state.record()
            )
            try:
                await asyncio.to_thread(files.write_atomic, self._file(state_id), data)
                self._on_disk.add(state_id)
            except (DiskFull, OSError) as exc:  # the KV goes anyway: tokens recompute it
                log.warning("state not spilled; its KV will be recomputed from its tokens",
                            state_id=state_id, error=str(exc))  # fmt: skip
        self.residency.remove(state_id)
        await self.engine.call(lambda e: e.block_manager.release(handle))

    def _check_room(self, owner: Principal) -> None:
        """Refuse a new state to a tenant that keeps `max_per_tenant` already."""
        if self.max_per_tenant is None:
            return
        held = sum(1 for state in self._states.values() if state.owner == owner.tenant)
        if held >= self.max_per_tenant:
            raise LimitReached(
                f"this tenant keeps {held} states, the most this server allows; delete some "
                "(DELETE /states/{state_id}) first"
            )

    async def _adopt(self, state: State, handle: KVHandle) -> State:
        """Record a new state whose KV is `handle` (taken over)."""
        self._states[state.state_id] = state
        self.residency.add(state.state_id, handle)
        self.records.insert(state)
        await self._fit_budget(keep=state.state_id)
        return state

    async def lease(
        self, owner: Principal, state_id: str, num_tokens: int | None = None
    ) -> KVHandle:
        """A handle of the caller's own on the state's KV (or on its first `num_tokens`),
        brought into the pool first. Release it, or hand it to `engine.submit`."""
        state = self.get(owner, state_id)
        async with self._lock:
            handle = await self._resident(state)
            # The engine thread takes the lease whether or not this caller is still waiting
            # (a client that left cancels it): once asked for, the lease is either returned
            # or given back, never dropped with its blocks still held.
            taking = asyncio.ensure_future(
                self.engine.call(lambda e: e.block_manager.share(handle, num_tokens))
            )
            try:
                lease = await asyncio.shield(taking)
                await self._fit_budget(keep=state_id)
            except BaseException:
                taking.add_done_callback(self._give_back)
                raise
        return lease

    def _give_back(self, taking: asyncio.Future) -> None:
        """Release a lease that was taken for a caller that is gone."""
        if not taking.cancelled() and taking.exception() is None:
            task = asyncio.ensure_future(self.release(taking.result()))
            self._giving_back.add(task)  # held until done: a task nobody holds may vanish
            task.add_done_callback(self._giving_back.discard)

    async def release(self, handle: KVHandle) -> None:
        await self.engine.call(lambda e: e.block_manager.release(handle))

    # --- making states ----------------------------------------------------------------

    async def create_from(
        self,
        owner: Principal,
        *,
        text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        config: dict[str, Any] | None = None,
    ) -> State:
        """A state that has read `text`, or the chat-formatted `messages`."""
        if messages is not None:
            ids = self.requests.chat(messages, add_generation_prompt)
            return await self.create(owner, ids, config or {}, param="messages")
        ids = self.requests.text(text or "", param="text")
        return await self.create(owner, ids, config or {}, param="text")

    async def create(
        self,
        owner: Principal,
        token_ids: list[int],
        config: dict[str, Any],
        meta: dict | None = None,
        *,
        param: str = "token_ids",
    ) -> State:
        """A state that has read `token_ids` (`param`: the request field they came from)."""
        self._check_room(owner)
        token_ids = self.requests.token_ids(token_ids, param)
        self.requests.max_tokens(len(token_ids), None, prompt_param=param)  # the context
        with about(param):
            handle = await self.engine.call(lambda e: e.prefill_kv(token_ids))
        state = State(
            uuid.uuid4().hex, list(token_ids), config=config, meta=meta or {}, owner=owner.tenant
        )
        async with self._lock:
            state = await self._adopt(state, handle)
        await self.records.written()  # answered once recorded: a crash then loses nothing
        return state

    async def commit(
        self, owner: Principal, handle: KVHandle, parent_id: str, meta: dict | None = None
    ) -> State:
        """A child of `parent_id` whose KV is `handle` (taken over): a generation's result."""
        parent = self._states.get(parent_id)
        child = State(
            uuid.uuid4().hex,
            list(handle.token_ids),
            parent_id=parent_id if parent is not None else None,
            config=dict(parent.config) if parent else {},
            checkpoints=dict(parent.checkpoints) if parent else {},
            meta=meta or {},
            owner=owner.tenant,
        )
        async with self._lock:
            child = await self._adopt(child, handle)
        await self.records.written()
        return child

    async def fork(self, owner: Principal, state_id: str, token_index: int | None = None) -> State:
        """A child sharing the parent's blocks (of its first `token_index` tokens)."""
        parent = self.get(owner, state_id)
        n = self._check_index(parent, token_index)
        self._check_room(owner)
        child = State(
            uuid.uuid4().hex,
            parent.token_ids[:n],
            parent_id=state_id,
            config=dict(parent.config),
            checkpoints={k: v for k, v in parent.checkpoints.items() if v <= n},
            owner=owner.tenant,
        )
        async with self._lock:
            handle = await self._resident(parent)
            shared = await self.engine.call(lambda e: e.block_manager.share(handle, n))
            child = await self._adopt(child, shared)
        await self.records.written()
        self.counts["forks"] += 1
        return child

    def _check_index(self, state: State, token_index: int | None) -> int:
        if token_index is None:
            return state.num_tokens
        if not 1 <= token_index <= state.num_tokens:
            raise InvalidRequest(
                f"token_index must be between 1 and the state's {state.num_tokens} tokens",
                param="token_index",
            )
        return token_index

    async def add_checkpoint(
        self, owner: Principal, state_id: str, name: str, token_index: int | None
    ) -> State:
        state = self.get(owner, state_id)
        state.checkpoints[name] = self._check_index(state, token_index)
        state.modified_at = now()
        self.records.update(state)
        await self.records.written()
        return state

    async def rollback(
        self,
        owner: Principal,
        state_id: str,
        token_index: int | None = None,
        checkpoint: str | None = None,
    ) -> State:
        """Truncate the state in place to its first `token_index` tokens, or to a
        checkpoint. Its children keep their own KV and tokens."""
        state = self.get(owner, state_id)
        if (token_index is None) == (checkpoint is None):
            raise InvalidRequest("give exactly one of token_index and checkpoint")
        if checkpoint is not None:
            if checkpoint not in state.checkpoints:
                known = ", ".join(sorted(state.checkpoints)) or "none"
                raise NotFound(
                    "checkpoint",
                    checkpoint,
                    f"state '{state_id}' has no checkpoint '{checkpoint}' (it has: {known})",
                    param="checkpoint",
                )
            token_index = state.checkpoints[checkpoint]
        n = self._check_index(state, token_index)
        async with self._lock:
            old = await self._resident(state)
            new = await self.engine.call(lambda e: e.block_manager.share(old, n))
            self.residency.remove(state_id)
            await self.release(old)
            self.residency.add(state_id, new)
            self._on_disk.discard(state_id)
            self._file(state_id).unlink(missing_ok=True)
            state.token_ids = state.token_ids[:n]
            state.checkpoints = {k: v for k, v in state.checkpoints.items() if v <= n}
            state.modified_at = now()
            self.records.update(state)
        await self.records.written()
        return state

    async def merge(self, owner: Principal, state_ids: list[str]) -> State:
        """Merge branches: the tokens all of them share, then each branch's own tokens
        after that common prefix, in the order given. The shared prefix and the whole
        first branch keep their KV; the later branches' tokens are recomputed (they sit at
        new positions). The parent is the branches' nearest common ancestor."""
        if len(state_ids) < 2:
            raise InvalidRequest("merge needs at least two states", param="state_ids")
        branches = [self.get(owner, s) for s in state_ids]
        self._check_room(owner)
        shared = min(common_prefix(branches[0].token_ids, b.token_ids) for b in branches[1:])
        tokens = branches[0].token_ids[:shared]
        for b in branches:
            tokens += b.token_ids[shared:]
        ancestor = self._common_ancestor(owner, state_ids)
        lease = await self.lease(owner, state_ids[0])
        try:
            with about("state_ids"):
                handle = await self.engine.call(lambda e: e.prefill_kv(tokens, prefix=lease))
        finally:
            await self.release(lease)
        first = branches[0]
        merged = State(
            uuid.uuid4().hex,
            tokens,
            parent_id=ancestor,
            config=dict(first.config),
            checkpoints={k: v for k, v in first.checkpoints.items() if v <= shared},
            meta={"merged_from": list(state_ids), "common_prefix_tokens": shared},
            owner=owner.tenant,
        )
        async with self._lock:
            merged = await self._adopt(merged, handle)
        await self.records.written()
        return merged

    def _common_ancestor(self, owner: Principal, state_ids: list[str]) -> str | None:
        chains = [[s.state_id for s in self.lineage(owner, i)] for i in state_ids]
        others = [set(c) for c in chains[1:]]
        return next((s for s in chains[0] if all(s in o for o in others)), None)

    def diff(self, owner: Principal, a: str, b: str) -> dict[str, Any]:
        sa, sb = self.get(owner, a), self.get(owner, b)
        n = common_prefix(sa.token_ids, sb.token_ids)

        def side(s: State) -> dict[str, Any]:
            rest = s.token_ids[n:]
            return {"state_id": s.state_id, "token_ids": rest, "text": self.text(rest)}

        return {
            "common_ancestor_id": self._common_ancestor(owner, [a, b]),
            "common_prefix_tokens": n,
            "common_text": self.text(sa.token_ids[:n]),
            "a": side(sa),
            "b": side(sb),
        }

    async def delete(self, owner: Principal, state_id: str) -> None:
        """Forget a state; its children are re-attached to its parent."""
        state = self.get(owner, state_id)
        async with self._lock:
            del self._states[state_id]
            if state_id in self.residency:
                await self.release(self.residency.remove(state_id))
            self._on_disk.discard(state_id)
            self._file(state_id).unlink(missing_ok=True)
            children = [s for s in self._states.values() if s.parent_id == state_id]
            for child in children:
                child.parent_id = state.parent_id
            self.records.delete(state_id)
            if children:
                self.records.update(*children)
        await self.records.written()

    # --- generation -------------------------------------------------------------------

    def generation_params(
        self,
        owner: Principal,
        state_id: str,
        *,
        max_tokens: int,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        logprobs: int | None = None,
        steering: SteeringPlan | None = None,
        commit: bool = False,
        readout: Readout | None = None,
    ) -> SamplingParams:
        """Sampling parameters for continuing the state: the request's own values, else the
        state's config (its sampling defaults). `max_tokens` is lowered to the room the
        context has left; a state that fills the context is refused."""
        state = self.get(owner, state_id)
        self.generation.ensure_alive()  # a stream's 200 would otherwise go out first
        config = state.config

        def pick(value: Any, key: str, default: Any) -> Any:
            if value is not None:
                return value
            return default if config.get(key) is None else config[key]

        budget = self.requests.max_tokens(
            state.num_tokens, max_tokens, prompt_param="state_id", cap=True
        )
        return self.requests.params(
            max_tokens=budget,
            temperature=pick(temperature, "temperature", 1.0),
            top_p=pick(top_p, "top_p", 1.0),
            seed=pick(seed, "seed", None),
            stop=self.requests.stops(stop or [], "stop_sequences"),
            logprobs=logprobs,
            steering=steering,
            keep_kv=commit,
            readout=readout,
        )

    async def generate(
        self, owner: Principal, state_id: str, params: SamplingParams
    ) -> AsyncIterator[tuple[StepOutput, State | None]]:
        """Continue a state: only the new tokens are computed. With `params.keep_kv`, the
        last output comes with the child state holding the prompt and what was generated."""
        state = self.get(owner, state_id)
        if params.keep_kv:
            self._check_room(owner)  # before the work, not when its child is committed
        lease = await self.lease(owner, state_id)
        outputs = self.generation.stream(state.token_ids, params, prefix=lease)
        async with aclosing(outputs):
            async for out in outputs:
                child = None
                if out.kv is not None:
                    child = await self.commit(owner, out.kv, state_id)
                yield out, child

    # --- files ------------------------------------------------------------------------

    async def export_bytes(self, owner: Principal, state_id: str) -> bytes:
        state = self.get(owner, state_id)
        lease = await self.lease(owner, state_id)
        try:
            kv = await self.engine.call(lambda e: e.read_kv(lease))
        finally:
            await self.release(lease)
        data = await asyncio.to_thread(
            files.encode, self.fingerprint, state.token_ids, kv, state.record()
        )
        self.counts["exports"] += 1
        return data

    async def export(self, owner: Principal, state_id: str, name: str | None) -> Path:
        path = self._named(owner, state_id if name is None else name)
        data = await self.export_bytes(owner, state_id)
        await asyncio.to_thread(files.write_atomic, path, data)
        return path

    def exports_dir(self, owner: Principal) -> Path:
        """The owner's export directory: `exports/<tenant>/`."""
        return self.exports / owner.tenant

    def _named(self, owner: Principal, name: str) -> Path:
        try:
            return files.safe_path(self.exports_dir(owner), name)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="name") from exc

    def exported(self, owner: Principal) -> list[tuple[str, int]]:
        """The files in the owner's export directory: (name, bytes), by name."""
        folder = self.exports_dir(owner)
        if not folder.is_dir():
            return []
        return sorted(
            (p.stem, p.stat().st_size) for p in folder.glob(f"*{files.SUFFIX}") if p.is_file()
        )

    def _adopt_unowned_exports(self) -> None:
        """Export files from before owners (directly in `exports/`) belong to the local
        principal: move them into its directory, once."""
        loose = sorted(self.exports.glob(f"*{files.SUFFIX}")) if self.exports.is_dir() else []
        if not loose:
            return
        target = self.exports_dir(LOCAL)
        target.mkdir(parents=True, exist_ok=True)
        for path in loose:
            if not (target / path.name).exists():
                path.rename(target / path.name)

    def delete_export(self, owner: Principal, name: str) -> None:
        path = self._named(owner, name)
        if not path.is_file():
            raise NotFound("export", name, f"No exported state named '{name}'", param="name")
        path.unlink()

    async def import_file(self, owner: Principal, name: str) -> State:
        path = self._named(owner, name)
        if not path.is_file():
            raise NotFound("export", name, f"No exported state named '{name}'", param="name")
        return await self.import_bytes(owner, await asyncio.to_thread(path.read_bytes), name)

    async def import_bytes(self, owner: Principal, data: bytes, source: str | None = None) -> State:
        """A new state from a state file: refused whole if it is damaged or belongs to
        another model."""
        self._check_room(owner)
        try:
            loaded = await asyncio.to_thread(files.decode, data, self.max_file_bytes)
        except files.StateFileError as exc:
            raise InvalidRequest(str(exc), param="file", code="invalid_state_file") from exc
        if loaded.fingerprint != self.fingerprint:
            raise InvalidRequest(
                f"this state belongs to another model (fingerprint {loaded.fingerprint[:12]}); "
                f"this server's model is {self.fingerprint[:12]}",
                param="file",
                code="model_mismatch",
            )
        with about("file"):
            handle = await self.engine.call(lambda e: e.load_kv(loaded.token_ids, loaded.kv))
        record = loaded.record
        state = State(
            uuid.uuid4().hex,
            loaded.token_ids,
            config=record.get("config", {}),
            checkpoints=record.get("checkpoints", {}),
            meta={"imported_from": record.get("state_id"), "source": source},
            owner=owner.tenant,
        )
        async with self._lock:
            state = await self._adopt(state, handle)
        await self.records.written()
        self.counts["imports"] += 1
        return state

    async def flush(self) -> None:
        """Write every resident state to its file and give its blocks back, and every
        queued record to the database (shutdown)."""
        try:
            async with self._lock:
                for state_id in self.residency.ids():
                    await self._spill(state_id)
        finally:
            await self.records.flush()
