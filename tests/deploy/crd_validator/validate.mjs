// Validate Prometheus-operator objects: reads a JSON array of objects on stdin, prints a JSON array
// with, for each object, null (valid) or the validator's error message.  The validators are the
// ones @kubernetes-models/prometheus-operator generates from prometheus-operator's API types.
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { readFileSync } from "node:fs";

const models = { PrometheusRule, ServiceMonitor };
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = objects.map((obj) => {
  const Model = models[obj.kind];
  if (!Model) return `no validator for kind ${obj.kind}`;
  if (obj.apiVersion !== Model.apiVersion) return `apiVersion ${obj.apiVersion}, expected ${Model.apiVersion}`;
  try {
    new Model(obj).validate();
    return null;
  } catch (err) {
    return err.message;
  }
});
process.stdout.write(JSON.stringify(results));
