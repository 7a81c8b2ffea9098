// What the people who run jit-broker are told and shown: four log search alerts on the broker's Application
// Insights (the sweep stopped, a rule outlived its grant, grants failing, ARM throttling), an action group that
// e-mails them, and a workbook of who opened which door, when, and for how long. docs/operations.md shows every
// query below, what each alert means and what to do; tests/infra/test_alerts.py keeps the two in step.
// Least privilege: nothing here has an identity or assigns a role. The alerts run their queries as Azure Monitor,
// the workbook as whoever opens it.
metadata description = 'jit-broker alerts, action group and operations workbook.'

@description('Azure region of the alert rules and the workbook (the action group is global).')
param location string = resourceGroup().location

@description('Tags for every resource.')
param tags object = {}

@description('Seeds the resource names: ag-<baseName>, alert-<baseName>-<what>.')
param baseName string

@description('Application Insights component the broker reports to; every alert and the workbook query it.')
param applicationInsightsName string

@description('E-mail address the alerts notify. Empty: no action group is deployed; the alerts still fire and show in Azure Monitor → Alerts.')
param alertEmail string = ''

@description('Window of the sweep alert: three sweep intervals (the default schedule runs every minute) plus two minutes for ingestion latency.')
param sweepAlertWindow string = 'PT5M'

@minValue(1)
@description('Failed grants in 15 minutes above which the grant-failure alert fires.')
param grantFailureThreshold int = 5

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// --- The queries (each shown verbatim in docs/operations.md). An alert's query runs over its window only. ---

// (a) The sweep, as the Functions host records each run of the `sweep` timer: any failed run, or no successful
// run at all, in the window. summarize without `by` always yields one row, so "no runs" gives succeeded == 0.
var sweepQuery = '''
requests
| where name == "sweep"
| summarize failed = countif(tobool(success) == false), succeeded = countif(tobool(success) == true)
| where failed > 0 or succeeded == 0
'''

// (b) The sweeper removed a rule whose expiry (in its name) had passed more than one interval ago.
var orphanQuery = '''
traces
| where message startswith "orphan rule outlived its grant"
| project timestamp, rule = tostring(customDimensions.rule), nsg = tostring(customDimensions.nsg),
    overdue_s = todouble(customDimensions.overdue_s)
'''

// (c) Grants the broker could not open or close (audit event `failed`); the threshold is the rule's.
var grantFailureQuery = '''
traces
| where tostring(customDimensions.event) == "failed"
| project timestamp, grant_id = tostring(customDimensions.grant_id), vm = tostring(customDimensions.vm),
    status = tostring(customDimensions.status), reason = tostring(customDimensions.reason)
'''

// (d) ARM answered 429 (or another throttling code) to the broker.
var armThrottleQuery = '''
traces
| where message startswith "arm throttled"
| project timestamp, code = tostring(customDimensions.code)
'''

// (e) A notification that no try delivered: the Functions host moves its message to the poison queue.
var notificationQuery = '''
traces
| where message startswith "notification undeliverable"
| project timestamp, error = tostring(customDimensions.error), poison_queue = tostring(customDimensions.poison_queue)
'''

// --- Who is told ---

var actionGroupName = 'ag-${baseName}'
var notify = !empty(alertEmail)
var actionGroupIds = notify ? [resourceId('Microsoft.Insights/actionGroups', actionGroupName)] : []

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (notify) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'jit-broker'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// --- The alerts: stateful (autoMitigate), no identity, scoped to the one Application Insights component ---

resource sweepAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${baseName}-sweep'
  location: location
  tags: tags
  kind: 'LogAlert'
  dependsOn: [
    actionGroup
  ]
  properties: {
    displayName: 'jit-broker: sweep failed or did not run'
    description: 'A run of the sweep timer failed, or none succeeded in the last 3 intervals: expired grants may stay open. See docs/operations.md.'
    severity: 1
    enabled: true
    autoMitigate: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT1M'
    windowSize: sweepAlertWindow
    criteria: {
      allOf: [
        {
          query: sweepQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroupIds
      customProperties: {
        runbook: 'docs/operations.md#sweep-failed-or-did-not-run'
      }
    }
  }
}

resource orphanAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${baseName}-orphan'
  location: location
  tags: tags
  kind: 'LogAlert'
  dependsOn: [
    actionGroup
  ]
  properties: {
    displayName: 'jit-broker: a rule outlived its grant'
    description: 'The sweeper removed a broker rule more than one interval after its expiry: a door stayed open longer than granted. See docs/operations.md.'
    severity: 1
    enabled: true
    autoMitigate: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: orphanQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroupIds
      customProperties: {
        runbook: 'docs/operations.md#a-rule-outlived-its-grant'
      }
    }
  }
}

resource grantFailureAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${baseName}-grant-failures'
  location: location
  tags: tags
  kind: 'LogAlert'
  dependsOn: [
    actionGroup
  ]
  properties: {
    displayName: 'jit-broker: grants failing'
    description: 'More than ${grantFailureThreshold} grants failed in 15 minutes: people cannot get in, or doors may not close. See docs/operations.md.'
    severity: 2
    enabled: true
    autoMitigate: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: grantFailureQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: grantFailureThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroupIds
      customProperties: {
        runbook: 'docs/operations.md#grants-failing'
      }
    }
  }
}

resource armThrottleAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${baseName}-arm-throttled'
  location: location
  tags: tags
  kind: 'LogAlert'
  dependsOn: [
    actionGroup
  ]
  properties: {
    displayName: 'jit-broker: ARM throttling'
    description: 'Azure Resource Manager throttled the broker in the last 15 minutes: grants and the sweep slow down, then fail. See docs/operations.md.'
    severity: 3
    enabled: true
    autoMitigate: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: armThrottleQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroupIds
      customProperties: {
        runbook: 'docs/operations.md#arm-throttling'
      }
    }
  }
}

resource notificationAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${baseName}-notifications'
  location: location
  tags: tags
  kind: 'LogAlert'
  dependsOn: [
    actionGroup
  ]
  properties: {
    displayName: 'jit-broker: Notifications undeliverable'
    description: 'A notification failed every try in the last 15 minutes and went to the poison queue: approvers or requesters were not told. See docs/operations.md.'
    severity: 2
    enabled: true
    autoMitigate: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: notificationQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroupIds
      customProperties: {
        runbook: 'docs/operations.md#notifications-undeliverable'
      }
    }
  }
}

// --- The workbook: its items and queries live in operations-workbook.json; the placeholder there becomes the
// component's id, so the workbook opens on the broker's telemetry from anywhere in the portal. ---

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, baseName, 'operations-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'jit-broker operations (${baseName})'
    description: 'Who opened which door, when, and for how long; failures by reason; sweep health.'
    category: 'workbook'
    sourceId: applicationInsights.id
    serializedData: replace(loadTextContent('operations-workbook.json'), '__APPLICATION_INSIGHTS_ID__', applicationInsights.id)
  }
}

output actionGroupId string = notify ? resourceId('Microsoft.Insights/actionGroups', actionGroupName) : ''
output workbookId string = workbook.id
output alertRuleIds array = [
  sweepAlert.id
  orphanAlert.id
  grantFailureAlert.id
  armThrottleAlert.id
]
