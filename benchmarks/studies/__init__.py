"""One-off studies: each answered one question, and docs/benchmarks.md records its finding with the
command that measured it. They stay so that a finding can be measured again on other hardware or code."""
