"""infer stage of neuroflood."""
