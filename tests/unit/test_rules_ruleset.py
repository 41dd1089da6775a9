"""Reading and checking a rule set (#27): TOML files, stored JSON and query parameters."""

from __future__ import annotations

import json
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys_batch.errors import ConfigError
from recsys_batch.rules import NO_RULES, RULE_NAMES, RuleError, RuleSet, parse_rules


class TestParse:
    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ({}, NO_RULES),
            ({"min_new": 2, "max_per_category": 1}, RuleSet(min_new=2, max_per_category=1)),
            ({"min_new": " 2 ", "promoted_first": "3"}, RuleSet(min_new=2, promoted_first=3)),
            ({"max_per_sub_category": "1000"}, RuleSet(max_per_sub_category=1000)),
            ({"departments": "GROCERY, PRODUCE"}, RuleSet(departments=("GROCERY", "PRODUCE"))),
            ({"brands": ["Private"]}, RuleSet(brands=("Private",))),
            ({"exclude_departments": ["DRUG GM"]}, RuleSet(exclude_departments=("DRUG GM",))),
            ({"price_min": "0.5", "price_max": 5}, RuleSet(price_min=0.5, price_max=5.0)),
            ({"price_min": 2, "price_max": "2"}, RuleSet(price_min=2.0, price_max=2.0)),
        ],
    )
    def test_values_of_files_and_queries(
        self, values: dict[str, object], expected: RuleSet
    ) -> None:
        assert parse_rules(values) == expected

    def test_a_toml_file_reads_with_exactly_the_rule_names(self) -> None:
        text = 'min_new = 2\nmax_per_category = 1\ndepartments = ["GROCERY"]\nprice_max = 4.5\n'
        assert parse_rules(tomllib.loads(text)) == RuleSet(
            min_new=2, max_per_category=1, departments=("GROCERY",), price_max=4.5
        )

    def test_rules_given_on_top_override_the_scenarios(self) -> None:
        scenario = parse_rules({"min_new": 2, "max_per_category": 1})
        got = parse_rules({"max_per_category": "3", "brands": "Private"}, scenario)
        assert got == RuleSet(min_new=2, max_per_category=3, brands=("Private",))

    def test_is_empty_only_without_rules(self) -> None:
        assert NO_RULES.is_empty
        assert not parse_rules({"min_new": 0, "promoted_first": 1}).is_empty


class TestBadInput:
    @pytest.mark.parametrize(
        ("values", "rule", "says"),
        [
            ({"max_per_brand": 1}, "max_per_brand", "unknown rule 'max_per_brand'"),
            ({"min-new": 1}, "min-new", "the rules are min_new, max_per_category"),
            ({"min_new": -1}, "min_new", "expected a whole number 0..1000"),
            ({"min_new": 1001}, "min_new", "1001"),
            ({"min_new": "two"}, "min_new", "'two'"),
            ({"min_new": 2.0}, "min_new", "2.0"),
            ({"min_new": True}, "min_new", "True"),
            ({"promoted_first": "-1"}, "promoted_first", "'-1'"),
            ({"max_per_category": 0}, "max_per_category", "1..1000"),
            ({"max_per_sub_category": "0"}, "max_per_sub_category", "1..1000"),
            ({"departments": []}, "departments", "1..100 non-empty names"),
            ({"departments": ""}, "departments", "non-empty names"),
            ({"brands": "Private,,National"}, "brands", "non-empty names"),
            ({"brands": ["Private", 3]}, "brands", "['Private', 3]"),
            ({"exclude_departments": 7}, "exclude_departments", "7"),
            ({"exclude_departments": ["x" * 101]}, "exclude_departments", "non-empty names"),
            ({"price_min": -0.5}, "price_min", "expected a price >= 0"),
            ({"price_max": "nan"}, "price_max", "'nan'"),
            ({"price_max": float("inf")}, "price_max", "inf"),
            ({"price_min": False}, "price_min", "False"),
            ({"price_min": "cheap"}, "price_min", "'cheap'"),
            ({"price_min": 5, "price_max": 2}, "price_min", "price_min 5 is above price_max 2"),
        ],
    )
    def test_names_the_rule_and_the_value(
        self, values: dict[str, object], rule: str, says: str
    ) -> None:
        with pytest.raises(RuleError, match="rule") as caught:
            parse_rules(values)
        assert caught.value.rule == rule
        assert says in str(caught.value)

    def test_a_query_that_crosses_the_scenarios_price_names_the_query_rule(self) -> None:
        """Catches blaming the scenario's rule for the request's bad value."""
        with pytest.raises(RuleError) as caught:
            parse_rules({"price_max": "1"}, parse_rules({"price_min": 3}))
        assert caught.value.rule == "price_max"

    def test_a_rule_error_exits_2(self) -> None:
        """The CLI maps ``ConfigError`` to exit code 2 (bad input)."""
        with pytest.raises(ConfigError) as caught:
            parse_rules({"nope": 1})
        assert caught.value.exit_code == 2

    def test_a_long_value_is_cut_in_the_message(self) -> None:
        with pytest.raises(RuleError) as caught:
            parse_rules({"min_new": "9" * 500})
        assert len(str(caught.value)) < 200


names = st.lists(
    st.text("ABCxyz &", min_size=1, max_size=8).map(str.strip).filter(bool), min_size=1
)
rule_sets = st.builds(
    RuleSet,
    min_new=st.integers(0, 1000),
    max_per_category=st.none() | st.integers(1, 1000),
    max_per_sub_category=st.none() | st.integers(1, 1000),
    departments=st.none() | names.map(tuple),
    exclude_departments=st.just(()) | names.map(tuple),
    brands=st.none() | names.map(tuple),
    price_min=st.none() | st.floats(0, 10),
    price_max=st.none() | st.floats(10, 20),
    promoted_first=st.integers(0, 1000),
)


@given(rule_sets)
def test_stored_json_reads_back_to_the_same_rule_set(rules: RuleSet) -> None:
    """What ``recsys scenario set`` stores (``to_dict`` as JSON) is the rule set served."""
    stored = json.dumps(rules.to_dict())
    assert parse_rules(json.loads(stored)) == rules
    assert set(rules.to_dict()) <= set(RULE_NAMES)


@given(rule_sets)
def test_the_same_rules_as_query_parameters_read_the_same(rules: RuleSet) -> None:
    """A rule given ad hoc (``?min_new=2&brands=A,B``) means what it means in a file."""
    query = {
        name: ",".join(value) if isinstance(value, list) else repr(value)
        for name, value in rules.to_dict().items()
    }
    assert parse_rules(query) == rules
