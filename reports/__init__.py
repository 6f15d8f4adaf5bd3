"""What managers see: figures over tickets and their audit trail, charts, reports."""
