from collab_billing.cli import app

app(prog_name="collab-billing")
