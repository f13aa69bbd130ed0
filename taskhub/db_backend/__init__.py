"""django-prometheus's PostgreSQL backend without a new class per connection (base.py)."""
