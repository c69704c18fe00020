"""train stage of neuroflood."""
