"""Alembic's environment. It runs on the connection that `glassbox.store.migrate` hands it
in `config.attributes["connection"]`: no alembic.ini and no URL of its own."""

from alembic import context

from glassbox.store.models import Base

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=Base.metadata,
    # SQLite alters most of a table's shape only by copying it: autogenerate writes
    # batch operations, which do that on SQLite and plain ALTERs elsewhere.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
