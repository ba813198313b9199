"""The built-in toy robot task for the demo and closed-loop evaluation."""
