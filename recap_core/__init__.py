"""recap: the RECAP loop (pi0.6 offline RL) for vision-language-action policies, on JAX.

`recap_core` is the library; `recap_cli` is the thin command-line front end over it.
"""

__version__ = "0.1.0"
