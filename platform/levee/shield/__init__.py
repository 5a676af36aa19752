"""The shield: rate limits, load shedding, sign-up and login defence, mitigation modes.

Other apps call `levee.shield.api`; everything else here is the shield's own business.
"""
