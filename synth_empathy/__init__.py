"""synth-empathy: the Synth-Empathy method (generate, discriminate, diversify) as a Ray Data job."""

__version__ = "0.1.0"
