from django.dispatch import Signal

# Sent once, when an account's email address is first verified: args user. Billing grants the
# sign-up credit here (free credit only reaches verified addresses).
user_verified = Signal()
