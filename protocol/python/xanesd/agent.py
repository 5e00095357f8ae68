"""An adaptive agent in the bluesky-adaptive shape (`ingest`, `suggest`, `report`) that asks
xanesd which energies to measure next (`select_energies`) and can submit the plan that measures
them to a Bluesky queue server (`queue_item_add` over its ZeroMQ API: a JSON request
{"method", "params"} on a REQ socket, a JSON reply with "success" and "msg").

The plan's name and arguments come from configuration, as a beamline's plans differ:
  XanesAgent(control="tcp://127.0.0.1:5557",
             plan={"name": "xanes_map", "kwargs": {"detectors": ["det"]},
                   "energies_kwarg": "energies", "energy_unit": "keV"},
             select={"n": 12, "source": "in_use"},
             queue="tcp://127.0.0.1:60615", user="xanesd-agent", user_group="primary")
The plan also gets md={"energies_eV": [...]}, which the bridge (xanesd.bluesky) reads as the
scan's planned energies."""
import json

from . import protocol as xp


class AgentError(RuntimeError):
    pass


class XanesAgent:
    def __init__(self, control="tcp://127.0.0.1:5557", plan=None, select=None, queue=None,
                 user="xanesd-agent", user_group="primary", timeout_ms=30000, client=None):
        self.client = client or xp.Client(control, timeout_ms=timeout_ms)
        self.plan = dict(plan or {})
        if "name" not in self.plan:
            raise AgentError("plan needs a 'name' (the queue server's plan that measures a list of energies)")
        if self.plan.get("energy_unit", "eV") not in ("eV", "keV"):
            raise AgentError("plan 'energy_unit' must be 'eV' or 'keV'")
        self.select = dict(select or {})
        self.queue, self.user, self.user_group, self.timeout_ms = queue, user, user_group, timeout_ms
        self.measured = []      # (x, y) pairs given to ingest
        self.last = None        # the last select_energies reply
        self.submitted = []     # queue server replies

    # bluesky-adaptive: tell the agent what was measured (xanesd has the data itself; kept for report)
    def ingest(self, x, y=None):
        self.measured.append((x, y))

    # bluesky-adaptive: the next points to measure, one batch = one energy list
    def suggest(self, batch_size=1):
        reply = self.client.request("select_energies", **self.select)
        if not reply.get("ok"):
            raise AgentError(f"xanesd select_energies failed: {reply.get('error')}")
        self.last = reply
        suggestion = {"energies_eV": reply["energies_eV"], "dwell_weights": reply.get("dwell_weights"),
                      "reference_names": reply.get("reference_names"), "method": reply.get("method")}
        if self.queue:
            self.submitted.append(self.submit(reply["energies_eV"]))
            suggestion["queue_item_uid"] = self.submitted[-1].get("item", {}).get("item_uid")
        return [suggestion] * max(1, int(batch_size))

    def plan_item(self, energies_eV):
        divisor = 1000.0 if self.plan.get("energy_unit", "eV") == "keV" else 1.0
        kwargs = dict(self.plan.get("kwargs", {}))
        kwargs[self.plan.get("energies_kwarg", "energies")] = [e / divisor for e in energies_eV]
        md = dict(kwargs.get("md", {}))
        md["energies_eV"] = list(energies_eV)
        kwargs["md"] = md
        return {"item_type": "plan", "name": self.plan["name"], "args": list(self.plan.get("args", [])), "kwargs": kwargs}

    def submit(self, energies_eV):
        zmq = xp._zmq()
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        try:
            sock.connect(self.queue)
            sock.send(json.dumps({"method": "queue_item_add", "params": {
                "item": self.plan_item(energies_eV), "user": self.user, "user_group": self.user_group}}).encode())
            try:
                reply = json.loads(sock.recv())
            except zmq.Again:
                raise AgentError(f"no reply from the queue server at {self.queue} within {self.timeout_ms} ms") from None
        finally:
            sock.close()
        if not reply.get("success"):
            raise AgentError(f"queue server refused the plan: {reply.get('msg')}")
        return reply

    def report(self):
        if not self.last:
            return {"measured": len(self.measured), "suggested": None}
        keys = ("energies_eV", "method", "reference_names", "expected_fraction_rmse", "full_grid_fraction_rmse", "n")
        return {"measured": len(self.measured), "suggested": {k: self.last.get(k) for k in keys},
                "submitted": len(self.submitted)}
