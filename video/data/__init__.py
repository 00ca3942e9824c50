"""Video data: Kinetics lists and the Kinetics-722 merge (:mod:`.kinetics722`)."""
