"""Pure functions and algorithms of the method, free of Ray: round parsing, turn
sampling, k-center, judge-score parsing and metrics. Unit-testable on their own."""
