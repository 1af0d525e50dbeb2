"""BMR-GW routing: the endpoint table (endpoints.yaml), the gateway's settings and route resolution.

- :mod:`routing.config` — endpoints, peers, clients: the whole :class:`~routing.config.Config`;
- :mod:`routing.settings` — the ``gateway:`` section;
- :mod:`routing.fields` — typed YAML readers shared by every settings module (refdb's too);
- :mod:`routing.table` — route resolution; :mod:`routing.watch` — reloads; :mod:`routing.edit`, :mod:`routing.commands` — ``bmrgw endpoints``.

Nothing is imported here, so ``refdb.config`` can use :mod:`routing.fields` while :mod:`routing.config` uses refdb's settings.
"""
