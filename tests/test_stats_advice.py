"""data/stats.py's PLW suggestion follows the paper's numbers: 0.242 on short-completion data (R_g about 0.08),
0 on medium/long (R_g >= 1, Alpaca 3.27), and R_g in between flagged as outside the paper's data."""
from data.stats import CRITICAL_PLW, plw_advice, suggest_plw


def test_plw_advice_regimes():
    short = plw_advice(0.08)
    assert short["suggested_plw"] == CRITICAL_PLW == 0.242 and short["regime"] == "short" and short["in_paper_range"]
    assert short["plw_by_target"] == {"multiple_choice": [0.01, 0.5], "short_generation": [0.01, 0.5],
                                      "long_generation": [1.0, 1.0]}
    between = plw_advice(0.15)  # e.g. inverted Stanford Alpaca with the LLaMA tokenizer
    assert between["regime"] == "between" and not between["in_paper_range"] and "outside the paper's data" in between["reason"]
    assert 0.01 <= between["suggested_plw"] <= 0.5
    for rg in (1.0, 3.27, 10.0):
        long = plw_advice(rg)
        assert long["suggested_plw"] == 0 and long["regime"] == "long" and long["plw_by_target"] is None
    assert suggest_plw(0.08) == (short["suggested_plw"], short["reason"])  # the old (PLW, reason) interface
