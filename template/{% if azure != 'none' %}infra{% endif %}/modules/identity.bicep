// The app's user-assigned managed identity. It exists before the app, so that its roles
// (reading Key Vault secrets, pulling from the registry) are in place when the app starts.

@description('Name of the identity.')
param name string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
