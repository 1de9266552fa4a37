"""Remote diagnosis with the site owner's consent (docs/diagnosis.md).

The gateway's side: signed requests checked in a fixed order, consent, an allow-list of actions
over `agent.operations`, answers signed by the device key, a hash-chained audit log. The support
desk's side (`remote`, `fleet`) lives here too: it speaks the same contract.
"""
