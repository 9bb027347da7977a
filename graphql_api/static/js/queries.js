// The GraphQL documents the page sends.
export const PAGE_SIZE = 12;

export const IMAGE_FIELDS = `
  id groupId owner caption title status imageUrl processedImageUrl
  predictions { label probability } modelVersion error createdAt processedAt`;
const GROUP_FIELDS = "id name description owner createdAt imageCount";
const ERROR_FIELDS = "... on Error { code message }";

export const Q = {
  groups: `query Groups($first: Int, $after: String) {
    groups(first: $first, after: $after) {
      edges { node { ${GROUP_FIELDS} } } pageInfo { hasNextPage endCursor } } }`,
  group: `query Group($id: ID!, $first: Int, $after: String) {
    group(id: $id) { ${GROUP_FIELDS}
      images(first: $first, after: $after) {
        edges { node { ${IMAGE_FIELDS} } } pageInfo { hasNextPage endCursor } } } }`,
  image: `query Image($id: ID!) { image(id: $id) { ${IMAGE_FIELDS} } }`,
  createGroup: `mutation CreateGroup($name: String!, $description: String!) {
    createGroup(input: { name: $name, description: $description }) {
      __typename ... on Group { ${GROUP_FIELDS} } ${ERROR_FIELDS} } }`,
  createImage: `mutation CreateImage($groupId: ID!, $caption: String!, $fileName: String,
      $contentType: String!, $contentLength: Int!) {
    createImage(input: { groupId: $groupId, caption: $caption, fileName: $fileName,
                         contentType: $contentType, contentLength: $contentLength }) {
      __typename
      ... on ImageUpload { image { ${IMAGE_FIELDS} } upload { url fields expiresAt } }
      ... on UploadTooLarge { maxBytes }
      ${ERROR_FIELDS} } }`,
  deleteImage: `mutation DeleteImage($id: ID!) {
    deleteImage(id: $id) { __typename ... on Deleted { id } ${ERROR_FIELDS} } }`,
  deleteGroup: `mutation DeleteGroup($id: ID!) {
    deleteGroup(id: $id) { __typename ... on Deleted { id } ${ERROR_FIELDS} } }`,
  reprocessImage: `mutation ReprocessImage($id: ID!) {
    reprocessImage(id: $id) { __typename ... on Image { ${IMAGE_FIELDS} } ${ERROR_FIELDS} } }`,
};

// n images in one request, aliased i0..i<n-1> with variables $id0..: one batch on the API side.
export function pollQuery(n) {
  const vars = Array.from({ length: n }, (_, i) => `$id${i}: ID!`).join(", ");
  const fields = Array.from({ length: n }, (_, i) => `i${i}: image(id: $id${i}) { ...ImageFields }`).join(" ");
  return `query Poll(${vars}) { ${fields} } fragment ImageFields on Image { ${IMAGE_FIELDS} }`;
}
