"""What protects a site beyond secure aggregation: differential privacy of its
update (`dp.py`) and the federation's keys and certificates (`pki.py`)."""
