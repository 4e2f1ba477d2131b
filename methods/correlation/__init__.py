"""Building blocks shared by the correlation methods (hsnet, asnet, asnethm): backbone taps, 4D
correlations, center-pivot 4D convolutions, attentive squeeze layers, the learners, the per-way
maps and released-checkpoint mapping. The registered methods live in methods/hsnet.py, asnet.py
and asnethm.py."""
