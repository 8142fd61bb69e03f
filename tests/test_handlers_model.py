"""A hypothesis state machine drives registry and scopes against a plain model."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from waclient import HandlerRegistry, Scope, ScopeClosedError, Subscription
from waclient.events import ConnectedEv, DisconnectedEv, MessageEv

TYPES = (MessageEv, ConnectedEv, DisconnectedEv)


@dataclass
class ModelScope:
    real: Scope
    parent: ModelScope | None
    open: bool = True
    children: list[ModelScope] = field(default_factory=list)


@dataclass
class ModelSub:
    real: Subscription[object]
    number: int
    event_type: type
    scope: ModelScope
    live: bool = True


class RegistryMachine(RuleBasedStateMachine):
    scopes = Bundle("scopes")
    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.registry = HandlerRegistry(max_listeners=None)
        self.all_scopes: list[ModelScope] = []
        self.all_subs: list[ModelSub] = []
        self.calls: list[tuple[int, object]] = []
        self.numbers = 0

    # -- model helpers ----------------------------------------------------------------------

    def live_subs(self, event_type: type | None = None) -> list[ModelSub]:
        return [
            s
            for s in self.all_subs
            if s.live and (event_type is None or s.event_type is event_type)
        ]

    def model_close(self, scope: ModelScope) -> None:
        if not scope.open:
            return
        scope.open = False
        for child in scope.children:
            self.model_close(child)
        for sub in self.all_subs:
            if sub.scope is scope:
                sub.live = False

    def descendants(self, scope: ModelScope) -> list[ModelScope]:
        out = [scope]
        for child in scope.children:
            out.extend(self.descendants(child))
        return out

    # -- rules ------------------------------------------------------------------------------

    @rule(target=scopes)
    def open_top_scope(self) -> ModelScope:
        scope = ModelScope(self.registry.scope(), None)
        self.all_scopes.append(scope)
        return scope

    @rule(target=scopes, parent=scopes)
    def open_child_scope(self, parent: ModelScope) -> ModelScope:
        if not parent.open:
            try:
                parent.real.scope()
            except ScopeClosedError:
                pass
            else:
                raise AssertionError("a closed scope opened a child")
            # Hypothesis needs a value for the bundle: a fresh top-level scope.
            return self.open_top_scope()
        child = ModelScope(parent.real.scope(), parent)
        parent.children.append(child)
        self.all_scopes.append(child)
        return child

    @rule(target=subs, scope=scopes, kind=st.sampled_from(TYPES))
    def register(self, scope: ModelScope, kind: type) -> ModelSub:
        self.numbers += 1
        number = self.numbers

        def handler(ev: object, number: int = number) -> None:
            self.calls.append((number, ev))

        if not scope.open:
            try:
                scope.real.on(kind, handler)
            except ScopeClosedError:
                pass
            else:
                raise AssertionError("a closed scope took a handler")
            scope = self.open_top_scope()
        sub = ModelSub(scope.real.on(kind, handler), number, kind, scope)
        self.all_subs.append(sub)
        return sub

    @rule(sub=subs)
    def remove(self, sub: ModelSub) -> None:
        sub.real.remove()
        sub.live = False

    @rule(scope=consumes(scopes))
    def close(self, scope: ModelScope) -> None:
        scope.real.close()
        self.model_close(scope)

    @rule(kind=st.sampled_from(TYPES))
    def dispatch(self, kind: type) -> None:
        event = kind()
        self.calls.clear()
        called = self.registry.dispatch(event)
        expected = [s.number for s in self.live_subs(kind)]
        assert called == len(expected)
        assert [n for n, _ in self.calls] == expected
        assert all(ev is event for _, ev in self.calls)

    @precondition(lambda self: self.all_scopes)
    @rule(data=st.data())
    def close_any(self, data: st.DataObject) -> None:
        scope = data.draw(st.sampled_from(self.all_scopes))
        scope.real.close()
        self.model_close(scope)

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def counts_match(self) -> None:
        assert self.registry.count() == len(self.live_subs())
        for kind in TYPES:
            assert self.registry.count(kind) == len(self.live_subs(kind))
        for scope in self.all_scopes:
            assert scope.real.closed == (not scope.open)
            held = {id(s) for s in self.descendants(scope)}
            expected = sum(1 for s in self.live_subs() if id(s.scope) in held)
            assert scope.real.count() == (expected if scope.open else 0)
        for sub in self.all_subs:
            assert sub.real.active == sub.live


RegistryMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
TestRegistryMachine = RegistryMachine.TestCase
