#!/bin/sh
# azd predeploy hook: run the migrations as the Container Apps job, with the image about to
# be deployed, and wait until they succeeded. A failure stops `azd deploy` before the new
# revision exists; the old one keeps serving, on the last good revision of the database.
set -eu

: "${AZURE_RESOURCE_GROUP:?run through azd (azd deploy), which sets it}"
: "${MIGRATION_JOB_NAME:?run azd provision first}"
: "${SERVICE_WEB_IMAGE_NAME:?azd sets it once it has pushed the image}"

az containerapp job update --name "$MIGRATION_JOB_NAME" --resource-group "$AZURE_RESOURCE_GROUP" \
  --image "$SERVICE_WEB_IMAGE_NAME" --output none
execution=$(az containerapp job start --name "$MIGRATION_JOB_NAME" \
  --resource-group "$AZURE_RESOURCE_GROUP" --query name --output tsv)
echo "migrations: job execution $execution started"

# Up to the job's replica timeout (900 s), and a little more.
for _ in $(seq 1 100); do
  status=$(az containerapp job execution show --name "$MIGRATION_JOB_NAME" \
    --resource-group "$AZURE_RESOURCE_GROUP" --job-execution-name "$execution" \
    --query properties.status --output tsv)
  case "$status" in
    Succeeded)
      echo "migrations: done"
      exit 0
      ;;
    Failed | Stopped | Degraded)
      echo "migrations: job execution $execution ended $status; its logs are in Log Analytics" >&2
      exit 1
      ;;
  esac
  sleep 10
done
echo "migrations: job execution $execution did not finish in time" >&2
exit 1
