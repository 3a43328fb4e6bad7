"""`cmw tune`: measure the chat limit (and the number of workers) where throughput peaks within the SLOs, and
write it down as a profile. :mod:`agent.tune.search` decides what to measure; :mod:`agent.tune.runner` measures
on a live server through the load tester and the admin API's live limits; :mod:`agent.tune.profile` writes."""
