"""What can be computed for one unit: diverse feature visualisation and the MEI (:mod:`.dfv`), the shift
test, the phase test, baselines, exemplars, and the classic methods (:mod:`.classic`)."""
