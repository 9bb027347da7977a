"""Limits on what one GraphQL document may ask for, checked in one linear pass before graphql-core
validates it (so a refused document costs nothing more).

Per operation: depth (as Strawberry's QueryDepthLimiter counts it: top-level fields are 0,
introspection fields are not entered), aliases (all operations together, as MaxAliasesLimiter
counts them: a fragment's aliases once per spread), cost, and the pairs of same-named fields
graphql-core's OverlappingFieldsCanBeMerged must compare.

Why not Strawberry's limiters: they walk every path through the fragments. Fragments that each
spread the next one twice (a 220-token document) made them take 2^n steps, 9 s of blocked event
loop for one request. Here each fragment is summarised once (memoised) and a spread adds its
summary, so the work is linear in the document. Cycles are left to graphql-core's
NoFragmentCycles (a fragment being summarised counts 0 where it spreads itself).

Cost: every field costs 1; a field with a `first` argument (a connection) costs
1 + first x the cost of what it selects, with `first` as given (literal or variable), else the
default page size, clamped to 1..page_size_max (the most a page can hold). So
`groups(first: 20) { edges { node { id images(first: 20) { edges { node { id } } } } } }` costs
1 + 20 x (1 + 1 + 1 + (1 + 20 x (1 + 1 + 1))) = 1281.

Overlapping pairs: at each place in the response (a response-name path, fragments expanded, each
spread counted), k fields of the same name give k(k-1)/2 pairs; graphql-core compares about that
many (~40 us each on this machine), so `{ me { id } me { id } ... }` x 400 (under the token limit,
cost 800) took 3.5 s before this limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionNode,
    VariableNode,
    get_named_type,
)
from strawberry.extensions import SchemaExtension

from udagram.settings import Settings

# Work (selections visited + response-path nodes merged) one document may take to analyse; a
# legitimate document needs well under 1000. Keeps this pass itself bounded, whatever the input.
ANALYSIS_BUDGET = 50_000

# A response-path trie: response name -> [occurrences, children].
Trie = dict[str, list]


@dataclass
class Summary:
    """What one selection set adds up to, relative to where it sits."""

    depth: int = 0  # deepest level below (0: all its selections are at its own level)
    aliases: int = 0
    cost: int = 0
    paths: Trie = field(default_factory=dict)


@dataclass(frozen=True)
class OperationFigures:
    name: str
    depth: int
    aliases: int
    cost: int
    overlapping_pairs: int


class TooComplex(Exception):
    pass


class DocumentAnalysis:
    """The figures of every operation of a document; `work` counts what the analysis did."""

    def __init__(self, schema: GraphQLSchema, document: Any, variables: Mapping[str, Any] | None,
                 settings: Settings, budget: int = ANALYSIS_BUDGET) -> None:
        self.schema = schema
        self.settings = settings
        self.variables = dict(variables or {})
        self.budget = budget
        self.work = 0
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self.operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]

    def figures(self) -> Iterator[OperationFigures]:
        """Raises TooComplex if the analysis itself would exceed its budget."""
        for operation in self.operations:
            yield _Operation(self, operation).figures()

    def spend(self, amount: int = 1) -> None:
        self.work += amount
        if self.work > self.budget:
            raise TooComplex


class _Operation:
    """One operation: its variables' values, and each fragment summarised once."""

    def __init__(self, analysis: DocumentAnalysis, operation: OperationDefinitionNode) -> None:
        self.analysis = analysis
        self.operation = operation
        self.defaults = {
            d.variable.name.value: int(d.default_value.value)
            for d in operation.variable_definitions or ()
            if isinstance(d.default_value, IntValueNode)
        }
        self.fragment_summaries: dict[str, Summary | None] = {}  # None: being summarised (a cycle)

    def figures(self) -> OperationFigures:
        schema = self.analysis.schema
        root = schema.get_root_type(self.operation.operation)
        summary = self.selection_set(self.operation.selection_set.selections, root)
        return OperationFigures(
            name=self.operation.name.value if self.operation.name else "anonymous",
            depth=summary.depth,
            aliases=summary.aliases,
            cost=summary.cost,
            overlapping_pairs=self.pairs(summary.paths),
        )

    def pairs(self, paths: Trie) -> int:
        total = 0
        for count, children in paths.values():
            self.analysis.spend()
            total += count * (count - 1) // 2 + self.pairs(children)
        return total

    def selection_set(self, selections: tuple[SelectionNode, ...], parent: GraphQLNamedType | None) -> Summary:
        summary = Summary()
        for selection in selections:
            self.analysis.spend()
            if isinstance(selection, FieldNode):
                self.add_field(summary, selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner_type = self.analysis.schema.get_type(condition.name.value) if condition else parent
                self.add(summary, self.selection_set(selection.selection_set.selections, inner_type), adopt=True)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragment(selection.name.value)
                if fragment is not None:
                    self.add(summary, fragment, adopt=False)
        return summary

    def add_field(self, summary: Summary, node: FieldNode, parent: GraphQLNamedType | None) -> None:
        name = node.name.value
        definition = _field(parent, name)
        summary.aliases += 1 if node.alias else 0
        if node.selection_set is None:
            summary.cost += 1
            inner = Summary()
        else:
            child_type = get_named_type(definition.type) if definition else None
            inner = self.selection_set(node.selection_set.selections, child_type)
            if not name.startswith("__"):  # as QueryDepthLimiter: introspection is not entered
                summary.depth = max(summary.depth, 1 + inner.depth)
            summary.aliases += inner.aliases
            summary.cost += 1 + self.page_size(node, definition) * inner.cost
        self.merge(summary.paths, {(node.alias or node.name).value: [1, inner.paths]}, adopt=True)

    def fragment(self, name: str) -> Summary | None:
        if name not in self.fragment_summaries:
            definition = self.analysis.fragments.get(name)
            if definition is None:
                return None  # graphql-core's KnownFragmentNames refuses the document
            self.fragment_summaries[name] = None
            fragment_type = self.analysis.schema.get_type(definition.type_condition.name.value)
            self.fragment_summaries[name] = self.selection_set(definition.selection_set.selections, fragment_type)
        return self.fragment_summaries[name]

    def add(self, summary: Summary, other: Summary, adopt: bool) -> None:
        summary.depth = max(summary.depth, other.depth)
        summary.aliases += other.aliases
        summary.cost += other.cost
        self.merge(summary.paths, other.paths, adopt)

    def merge(self, target: Trie, source: Trie, adopt: bool) -> None:
        """Add `source`'s occurrences into `target`. `adopt`: `source` is fresh (not a fragment's
        memoised summary), so a subtree `target` lacks can be taken as is instead of copied."""
        for name, (count, children) in source.items():
            self.analysis.spend()
            node = target.get(name)
            if node is None:
                target[name] = [count, children if adopt else self.copy(children)]
            else:
                node[0] += count
                self.merge(node[1], children, adopt)

    def copy(self, paths: Trie) -> Trie:
        copied = {}
        for name, (count, children) in paths.items():
            self.analysis.spend()
            copied[name] = [count, self.copy(children)]
        return copied

    def page_size(self, node: FieldNode, definition: GraphQLField | None) -> int:
        """The multiplier of a connection (a field taking `first`); 1 for any other field."""
        if definition is None or "first" not in definition.args:
            return 1
        settings = self.analysis.settings
        value: Any = None
        for argument in node.arguments or ():
            if argument.name.value != "first":
                continue
            if isinstance(argument.value, IntValueNode):
                value = int(argument.value.value)
            elif isinstance(argument.value, VariableNode):
                variable = argument.value.name.value
                value = self.analysis.variables.get(variable, self.defaults.get(variable))
        if not isinstance(value, int) or isinstance(value, bool):
            value = settings.page_size_default
        return min(max(value, 1), settings.page_size_max)


def _field(parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
    if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
        return parent.fields.get(name)
    return None


def check(schema: GraphQLSchema, document: Any, variables: Mapping[str, Any] | None,
          settings: Settings) -> list[GraphQLError]:
    """The errors of a document over any limit of `settings` (empty: within all of them)."""
    analysis = DocumentAnalysis(schema, document, variables, settings)
    try:
        figures = list(analysis.figures())
    except (TooComplex, RecursionError):  # the parser caps nesting at 200; this is the safety net
        return [GraphQLError("the query is too complex to analyse: use fewer fragments and repeated fields",
                             extensions={"code": "QUERY_TOO_COMPLEX"})]
    errors = []
    for operation in figures:
        if operation.depth > settings.max_query_depth:
            errors.append(GraphQLError(
                f"'{operation.name}' exceeds maximum operation depth of {settings.max_query_depth}"))
    aliases = sum(operation.aliases for operation in figures)
    if aliases > settings.max_query_aliases:
        errors.append(GraphQLError(f"{aliases} aliases found. Allowed: {settings.max_query_aliases}"))
    for operation in figures:
        if operation.cost > settings.max_query_cost:
            errors.append(GraphQLError(
                f"'{operation.name}' costs {_shown(operation.cost)}, over the limit of {settings.max_query_cost} "
                "(every field costs 1; a connection multiplies what it selects by `first`): ask for smaller pages "
                "or fewer fields",
                extensions={"code": "QUERY_TOO_COSTLY", "cost": min(operation.cost, _SHOWN_MAX),
                            "maxCost": settings.max_query_cost}))
        if operation.overlapping_pairs > settings.max_query_overlapping_field_pairs:
            errors.append(GraphQLError(
                f"'{operation.name}' selects the same fields too many times at the same place "
                f"({_shown(operation.overlapping_pairs)} pairs to compare; the limit is "
                f"{settings.max_query_overlapping_field_pairs}): select each field once",
                extensions={"code": "QUERY_TOO_COMPLEX"}))
    return errors


_SHOWN_MAX = 10**15  # figures grow exponentially with nested spreads: show huge ones as a bound


def _shown(value: int) -> str:
    return str(value) if value <= _SHOWN_MAX else f"more than {_SHOWN_MAX}"


class QueryLimits(SchemaExtension):
    """Checks the document before graphql-core's validation; when it is over a limit, its errors
    become the result and graphql-core's rules (OverlappingFieldsCanBeMerged among them) never run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None:
            errors = check(context.schema._schema, context.graphql_document, context.variables, self.settings)
            if errors:
                # Strawberry skips its own validation when an extension has set the errors already.
                context.pre_execution_errors = errors
        yield
