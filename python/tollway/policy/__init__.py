"""Traffic policies: rate limits, usage caps and access rules, evaluated at admission.

- `config`: the policy language (`[[policies]]` in `tollway.toml`), its shorthands documented there.
- `engine`: compilation into the native matcher and limit specs; `PolicyEngine.evaluate` per
  request, returning an `Admission` (verdicts, headers, the error if denied, reservations to
  settle or release when the request ends).
- `state`: where counters live (in process, or Redis for a fleet).
- `testing`: `tollway policy test` and `tollway policy replay`.
"""
