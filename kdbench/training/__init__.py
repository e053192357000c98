"""The training layer: the loop, its members, teachers, precision, distribution and cost
measurement."""
