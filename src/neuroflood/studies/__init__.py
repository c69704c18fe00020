"""studies stage of neuroflood."""
