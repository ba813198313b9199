"""LeRobot datasets with the RECAP columns: schema, conversion, merge, stats, inspection, loading."""
