// App Service Authentication (Easy Auth) for the broker: requests without a valid Entra ID access token for the
// broker's app registration get 401 before they reach the code. The broker still verifies every token and checks
// roles itself, so turning this off never opens anything.
metadata description = 'Optional App Service Authentication in front of the broker.'

@description('Function app to protect.')
param siteName string

@description('Entra ID tenant of the broker\'s app registration.')
param tenantId string

@description('Entra ID authority host, e.g. https://login.microsoftonline.com.')
param authorityHost string

@description('Client id of the broker\'s app registration.')
param apiClientId string

@description('App ID URI of the broker\'s app registration.')
param apiAppIdUri string

@description('Client applications (appid/azp) let through; empty lets any client of the tenant through.')
param allowedClientApplications array = []

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: siteName
}

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'authsettingsV2'
  properties: {
    // checkov reads every Microsoft.Web/sites/config resource as the site's web config; these checks concern
    // settings that live elsewhere (the site resource) or do not apply to a Python function app:
    // checkov:skip=CKV_AZURE_13: this resource is the App Service Authentication setting itself (platform.enabled).
    // checkov:skip=CKV_AZURE_63: HTTP logs go to Application Insights via the Functions host; there is no App Service HTTP log on Flex.
    // checkov:skip=CKV_AZURE_65: detailed error pages are an IIS/App Service web-config setting; not applicable to a Flex function app.
    // checkov:skip=CKV_AZURE_66: failed request tracing is an IIS/App Service web-config setting; not applicable to a Flex function app.
    // checkov:skip=CKV_AZURE_80: .NET Framework version; the broker is a Python app.
    // checkov:skip=CKV_AZURE_88: Azure Files mounts; the broker keeps no files, its state is in Table Storage.
    // checkov:skip=CKV_AZURE_222: public network access is a site property, justified on the site resource in broker.bicep.
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/api/health'
      ]
    }
    httpSettings: {
      requireHttps: true
      forwardProxy: {
        convention: 'NoProxy'
      }
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: apiClientId
          openIdIssuer: '${authorityHost}/${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            apiAppIdUri
            apiClientId
          ]
          defaultAuthorizationPolicy: {
            allowedApplications: allowedClientApplications
          }
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}
