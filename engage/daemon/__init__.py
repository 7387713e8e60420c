"""``engage run`` (SPEC §7): the long-lived process (``process``), its APScheduler
wiring (``scheduler``) and what it reports about itself (``status``).

An edge: it builds the library's objects from config and runs planning and
delivery on a schedule.
"""
