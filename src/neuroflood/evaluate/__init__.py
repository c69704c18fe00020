"""evaluate stage of neuroflood."""
